"""The search report: re-rendered by `edgeopt report OUT_DIR` from the stored trials, and a page
that loads in a real headless Chromium with no console errors and a rendered plot."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeopt.search import SearchOptions, SearchSpace, run_search
from _passes import TEST_PASSES

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--enable-logging=stderr", "--v=0",
                  "--virtual-time-budget=10000"]


@pytest.fixture(scope="module")
def search_out(dscnn, kws_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("search") / "out"
    splits = kws_data.splits(tune="0:300", calib="300:500")
    result = run_search(dscnn, data_splits=splits, target="rpi4", space=SearchSpace(TEST_PASSES), trials=6,
                        max_drop=0.02, out_dir=out, progress=False, options=SearchOptions(heartbeat_interval=1, grace_period=2))
    return out, result


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("headless Chromium is required: apt-get install chromium (listed in .ci/apt-packages.txt)")
    return exe


def _open(page: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"chrome-profile-{len(list(tmp_path.iterdir()))}"
    return subprocess.run([_chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *extra, page.resolve().as_uri()],
                          capture_output=True, text=True, timeout=120)


def _console_messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if re.search(r":CONSOLE[:(]", line)]


def test_report_command_rerenders_from_stored_trials(search_out):
    out, result = search_out
    page = out / "search_report.html"
    page.unlink()
    (out / "search_report.json").unlink()
    env = {"PYTHONPATH": str(ROOT / "src"), "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-m", "edgeopt", "report", str(out), "--json"], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["best"] == result.best.number and summary["trials"] == len(result.trials)
    assert page.is_file()
    data = json.loads((out / "search_report.json").read_text())
    table = {row["trial"]: row for row in data["trials_table"]}
    for t in result.trials:
        row = table[t.number]
        assert row["state"] == t.state and row["chosen"] == (t.number == result.best.number)
        if t.metrics is not None:
            assert row["size_bytes"] == t.metrics.size_bytes
    budgets = {b["budget"]: b for b in data["budgets"]}
    assert budgets["storage"]["limit_bytes"] == 8 * 1024**3
    assert budgets["storage"]["headroom_bytes"] == 8 * 1024**3 - result.best.metrics.size_bytes


def test_report_command_without_search_is_a_clear_error(tmp_path):
    env = {"PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-m", "edgeopt", "report", str(tmp_path)], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)
    assert proc.returncode == 1 and "search.json" in proc.stderr and "Traceback" not in proc.stderr


def test_report_loads_in_headless_chromium_without_console_errors(search_out, tmp_path):
    out, result = search_out
    page = out / "search_report.html"
    dom = _open(page, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert _console_messages(dom.stderr) == []
    # plotly drew the figure: the plot div holds its SVG layers, with a point per evaluated trial
    plot = dom.stdout[dom.stdout.index('id="pareto-plot"'):]
    assert 'class="main-svg"' in plot
    evaluated = [t for t in result.trials if t.metrics is not None and t.metrics.latency_ms is not None]
    assert plot.count('class="point"') >= len(evaluated)
    assert f"trial {result.best.number}" in dom.stdout

    shot = tmp_path / "report.png"
    snap = _open(page, tmp_path, "--window-size=1400,1400", f"--screenshot={shot}")
    assert snap.returncode == 0 and shot.stat().st_size > 20_000


def test_console_error_detector_catches_a_broken_page(tmp_path):
    # the check above is only worth something if a failing script would show up
    bad = tmp_path / "bad.html"
    bad.write_text("<html><body><script>undefinedFunction();</script></body></html>")
    proc = _open(bad, tmp_path, "--dump-dom")
    assert any("undefinedFunction" in line for line in _console_messages(proc.stderr))


def test_report_of_a_search_scored_by_cosine_has_no_interval_to_format(ad_path, tmp_path, capsys):
    """Cosine has no per-row interval: the held-out CI is NaN in memory and null in report.json.
    Writing the page printed 'nan..nan'; re-rendering it with `edgeopt report` crashed."""
    import numpy as np

    from edgeopt.cli.main import run

    data = tmp_path / "noise.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((120, 640)).astype(np.float32))
    out = tmp_path / "out"
    assert run(["optimize", str(ad_path), "--data", str(data), "--metric", "cosine", "--max-drop", "0.01",
                "--target", "host", "--trials", "2", "--techniques", "fold,quantize.dynamic", "--out", str(out)]) == 0
    assert run(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "Rebuilt from its recipe" in page and "nan..nan" not in page
