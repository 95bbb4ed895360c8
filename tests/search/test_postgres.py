"""Two worker processes share one study on a real PostgreSQL server (started here, on loopback,
in a temporary folder) and finish N trials together: none lost, none run twice."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest

from shared_data import shared

WORKER = Path(__file__).with_name("_worker.py")
N = 12


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL server binaries are missing: apt-get install postgresql (listed in .ci/apt-packages.txt)")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    bindir = _pg_bin()
    root = Path(tempfile.mkdtemp(prefix="edgeopt-pg-"))
    as_root = os.geteuid() == 0
    # PostgreSQL refuses to run as root: run its tools as the postgres user, in a folder it owns
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    if as_root:
        shutil.chown(root, "postgres", "postgres")
    data, log = root / "data", root / "server.log"
    port = _free_port()
    subprocess.run(prefix + [str(bindir / "initdb"), "-D", str(data), "-U", "edgeopt", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True, timeout=120)
    opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(log), "-w", "-t", "60", "start"],
                   check=True, capture_output=True, timeout=120)
    try:
        yield f"postgresql+psycopg2://edgeopt@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(prefix + [str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_one_postgres_study(postgres_url):
    shared("mlperf_tiny/kws/dscnn_kws12.onnx")
    workers = [subprocess.Popen([sys.executable, str(WORKER), postgres_url, str(N), "--grace", "5"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [w.communicate(timeout=600) for w in workers]
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]

    study = optuna.load_study(study_name="edgeopt", storage=postgres_url)
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
    evaluated = [t for t in finished if "duplicate_of" not in t.user_attrs]
    # exactly N budgeted trials between the two workers
    assert len(evaluated) == N
    # no candidate ran twice: every evaluated trial has its own parameter set. A sampler may
    # propose a recipe again (categorical choices repeat); such a trial is pruned unevaluated,
    # points at the trial that holds the figures, and does not use up the budget.
    param_sets = [json.dumps(t.params, sort_keys=True) for t in evaluated]
    assert len(set(param_sets)) == N
    assert all("metrics" in t.user_attrs for t in evaluated)
    by_number = {t.number: t for t in trials}
    for t in finished:
        if "duplicate_of" in t.user_attrs:
            original = by_number[t.user_attrs["duplicate_of"]]
            assert original.params == t.params and "duplicate_of" not in original.user_attrs and "metrics" not in t.user_attrs
    # only claims made after the study was full are failed, and they never sampled parameters
    assert all(not t.params for t in trials if t.state.name == "FAIL")
    assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")]
    # both processes did part of the work
    pids = {str(w.pid) for w in workers}
    by_worker = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in evaluated}
    assert by_worker == pids
