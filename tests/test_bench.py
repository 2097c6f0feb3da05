"""Every bench command the README gives runs (docs/performance.md, "Figures"): each bench script, run here
with the fewest rounds that still go through all of its steps, exits 0, prints its table and saves
its results (in a directory of the test's own, not bench/results).  The figures themselves are the
bench's business, not a test's: nothing here is timed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# each README bench command, made small; and a line of the table it must print
COMMANDS = {
    "crash_latency": (["--runs", "2", "--rss-count", "2", "--overflow-runs", "1", "--threads-runs", "1"], "fault"),
    "core_hold": (["--sizes", "20", "--runs", "1"], "watch"),
    "handoff": (["--runs", "2"], "p50"),
    "metrics_cost": (["--rounds", "1", "--hooks", "10"], "metrics"),
    "overhead": (["--runs", "1", "--strace-runs", "1", "--iterations", "20000"], "watched"),
    "postfix": (["--runs", "1", "--messages", "60", "--warmup", "20", "--sessions", "3",
                 "--modes", "untraced,watch,strace,perf"], "tracerd perf"),
    "reliability": (["--watched", "5", "--churn", "8"], "watched"),
    "retrace_time": (["--runs", "1"], "retrace"),
    "watch_scale": (["--count", "20", "--concurrency", "5"], "per watched process"),
}  # fmt: skip
NEEDS = {"postfix": ("postconf", "smtp-source"), "retrace_time": ("debuginfod",), "overhead": ("strace",)}


def readme_benches() -> set[str]:
    """The bench scripts the docs tell a user to run (docs/performance.md has every figure)."""
    text = "".join(path.read_text() for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    return {line.split("bench/", 1)[1].split(".py", 1)[0] for line in text.split("`") if "python bench/" in line}


def test_every_readme_bench_is_run_here() -> None:
    """The README names no bench that this module does not run (hook_latency and restart have
    theirs in tests/test_hook_startup.py and tests/test_restart.py; threads_case and overflow_case
    run inside crash_latency; syscount in tests/test_syscount.py)."""
    assert readme_benches() - {"hook_latency", "restart", "threads_case", "overflow_case", "syscount"} == set(COMMANDS)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_bench_runs(name: str, tmp_path: Path) -> None:
    """`.venv/bin/python bench/NAME.py`, small: exit 0, its table printed, its results saved."""
    for program in NEEDS.get(name, ()):
        if shutil.which(program) is None and not Path("/usr/sbin", program).exists():
            pytest.skip(f"{program} is not installed")
    args, row = COMMANDS[name]
    result = subprocess.run([sys.executable, str(ROOT / "bench" / f"{name}.py"), *args],
                            capture_output=True, text=True, timeout=600, check=False, cwd=ROOT,
                            env={**os.environ, "TRACERD_BENCH_RESULTS": str(tmp_path)})  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert row in result.stdout, result.stdout
    saved = list(tmp_path.glob("*.json"))
    assert saved, result.stdout
    assert all(isinstance(json.loads(path.read_text()), dict) for path in saved)
