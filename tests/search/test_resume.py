"""kill -9 in the middle of a search, then resume: no finished trial is lost or changed, and only
the interrupted trial is run again (detected by its stale heartbeat, re-queued with its parameters)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna

from shared_data import shared

WORKER = Path(__file__).with_name("_worker.py")
N = 6


def _snapshot(url):
    study = optuna.load_study(study_name="edgeopt", storage=optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 30}}))
    return {t.number: t for t in study.get_trials(deepcopy=True)}


def test_kill_9_mid_trial_then_resume_keeps_finished_trials(tmp_path):
    shared("mlperf_tiny/kws/dscnn_kws12.onnx")
    db = tmp_path / "study.db"
    url = f"sqlite:///{db}"
    # every pass takes 2 s longer, so the kill below lands mid-trial even on a loaded machine; a
    # grace of 6 heartbeats keeps a live trial whose heartbeat thread a loaded machine delays from
    # being failed as stale (with grace 2 this test failed once while four busy processes shared 2 cores)
    proc = subprocess.Popen([sys.executable, str(WORKER), url, str(N), "--grace", "6", "--trial-delay", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed_during = None
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            if not db.exists():
                continue
            try:
                trials = _snapshot(url)
            except (KeyError, Exception):   # study not created yet
                continue
            finished = [t for t in trials.values() if t.state.is_finished()]
            # a trial about to run the (2 s slower) pruning pass: its continuous threshold makes it no
            # duplicate, which would complete at once (an empty or int8-only recipe can repeat, and
            # once completed between this look and the kill: the test then saw COMPLETE, not RUNNING)
            running = [t for t in trials.values() if t.state.name == "RUNNING" and "duplicate_of" not in t.user_attrs
                       and any(step["pass"] == "prune.threshold" for step in t.user_attrs.get("recipe", {}).get("steps", []))]
            if len(finished) >= 2 and running:
                os.kill(proc.pid, signal.SIGKILL)   # mid-evaluation: the recipe is set, figures are not
                killed_during = running[0].number
                break
    finally:
        if proc.poll() is None and killed_during is None:
            proc.kill()
        proc.wait(timeout=30)
    assert killed_during is not None, f"the worker ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL

    before = _snapshot(url)
    interrupted = before[killed_during]
    assert interrupted.state.name == "RUNNING"   # what kill -9 leaves behind
    finished_before = {n: t for n, t in before.items() if t.state.is_finished()}

    resumed = subprocess.run([sys.executable, str(WORKER), url, str(N), "--grace", "6"], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    after = _snapshot(url)
    # every trial finished before the kill is intact
    for n, t in finished_before.items():
        a = after[n]
        assert (a.state, a.params, a.values, a.user_attrs, a.datetime_complete) == \
               (t.state, t.params, t.values, t.user_attrs, t.datetime_complete)
    # the interrupted trial was failed as stale and re-run once, with the same parameters
    assert after[killed_during].state.name == "FAIL"
    retries = [t for t in after.values() if t.system_attrs.get("failed_trial") == killed_during]
    assert len(retries) == 1
    assert retries[0].params == interrupted.params and retries[0].state.is_finished()
    # no other trial failed, and the study holds exactly N finished trials
    assert [t.number for t in after.values() if t.state.name == "FAIL"] == [killed_during]
    assert sum(t.state.name in ("COMPLETE", "PRUNED") and "duplicate_of" not in t.user_attrs for t in after.values()) == N
