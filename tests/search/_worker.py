"""A search worker process for the resume and multi-worker tests: a real search of DS-CNN/KWS
with the real test passes, sharing the study given on the command line.

usage: python _worker.py STORAGE_URL TRIALS [--time-budget S] [--grace S]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "src"), str(Path(__file__).resolve().parent)]

import edgeopt  # noqa: E402
from edgeopt.data import load_data  # noqa: E402
from edgeopt.search import SearchOptions, SearchSpace, run_search  # noqa: E402
from _passes import DynamicInt8, ThresholdPrune  # noqa: E402

SHARED = (ROOT / ".." / "shared" / "data").resolve()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("storage")
    ap.add_argument("trials", type=int)
    ap.add_argument("--grace", type=int, default=2)
    ap.add_argument("--time-budget", type=float, default=None)
    ap.add_argument("--trial-delay", type=float, default=0.0,
                    help="seconds each pass takes extra, so a test can kill the worker mid-trial reliably")
    args = ap.parse_args()
    model = edgeopt.load(SHARED / "mlperf_tiny/kws/dscnn_kws12.onnx")
    data = load_data(SHARED / "datasets/speech_commands_test_v0.02_mlperf_mfcc.npz")
    splits = data.splits(tune="0:300", calib="300:500")
    # A continuous parameter (the pruning threshold) makes two identical recipes from two workers
    # practically impossible by chance: a repeated parameter set would mean a trial ran twice.
    # max_drop is generous so most trials complete (the test is about storage, not accuracy).
    options = SearchOptions(heartbeat_interval=1, grace_period=args.grace, sampler="random")
    passes = (ThresholdPrune, DynamicInt8)
    if args.trial_delay:
        import time

        def slowed(cls):
            class Slow(cls):
                def run(self, model, ctx):
                    time.sleep(args.trial_delay)
                    return super().run(model, ctx)

            return Slow

        passes = tuple(slowed(p) for p in passes)
    res = run_search(model, data_splits=splits, target="host", space=SearchSpace(passes),
                     max_drop=0.5, trials=args.trials, time_budget=args.time_budget, storage=args.storage, resume=True,
                     options=options, progress=False, seed=0)
    print(f"done: {len(res.trials)} trials", flush=True)


if __name__ == "__main__":
    main()
