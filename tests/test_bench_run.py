"""``make bench`` (bench/_run.py): runs what the machine can run, one line per skipped benchmark with the reason,
and exits 0 only when every benchmark it ran passed."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.fast


def _runner():
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "bench" / "_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _bench(tmp_path: Path, scripts: dict[str, str]) -> Path:
    d = tmp_path / "bench"
    d.mkdir()
    for name, body in scripts.items():
        (d / name).write_text(body, encoding="utf-8")
    return d


def _make_bench(bench_dir: Path, data: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, RADCOT_TEST_DATA=str(data))
    return subprocess.run([sys.executable, str(REPO / "bench" / "_run.py"), "--bench-dir", str(bench_dir)],
                          capture_output=True, text=True, env=env, timeout=60)


def test_every_real_benchmark_is_planned_and_gpu_and_data_needs_skip_with_the_reason(tmp_path):
    run = _runner()
    planned = {p.path.name: p.skip for p in run.plan(REPO / "bench", "no GPU: torch sees no CUDA device", tmp_path)}
    assert "_run.py" not in planned and set(run.NEEDS) <= set(planned)
    assert planned["gpu_ddp_smoke.py"] == planned["gpu_student.py"] == "no GPU: torch sees no CUDA device"
    for name in ("bm25_run_generation.py", "reproduction_cost.py", "student_generation.py", "teacher_expansion.py",
                 "teacher_throughput.py"):
        assert planned[name].startswith("no test data: set RADCOT_TEST_DATA ("), name
    assert planned["serve.py"] is None and planned["teacher_dead_endpoint.py"] is None
    for name in ("vaswani", "cranfield", "msmarco-passage"):
        (tmp_path / name).mkdir()
    with_data = {p.path.name: p.skip for p in run.plan(REPO / "bench", None, tmp_path)}
    assert set(with_data.values()) == {None}


def test_make_bench_runs_the_rest_after_a_failure_and_exits_1(tmp_path):
    bench = _bench(tmp_path, {"a_fails.py": "import sys; sys.exit(3)\n", "b_ok.py": "print('b ran')\n",
                              "teacher_throughput.py": "raise SystemExit('must not run without data')\n"})
    p = _make_bench(bench, tmp_path / "no-data")
    lines = p.stdout.splitlines()
    assert p.returncode == 1, p.stdout + p.stderr
    assert lines[0] == "== bench/a_fails.py" and "b ran" in lines
    assert f"== bench/teacher_throughput.py: skipped (no test data: set RADCOT_TEST_DATA ({tmp_path / 'no-data' / 'vaswani'} not found))" in lines
    assert lines[-1] == "bench: 2 ran, 1 skipped, failed: a_fails.py"


def test_make_bench_exits_0_when_every_benchmark_it_ran_passed(tmp_path):
    bench = _bench(tmp_path, {"b_ok.py": "print('b ran')\n", "student_generation.py": "print('generation ran')\n"})
    (tmp_path / "data" / "cranfield").mkdir(parents=True)
    p = _make_bench(bench, tmp_path / "data")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "generation ran" in p.stdout and p.stdout.splitlines()[-1] == "bench: 2 ran, 0 skipped"


def test_the_makefile_runs_the_runner():
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # under make test
    p = subprocess.run(["make", "-n", "--no-print-directory", "-o", ".venv/.installed", "bench"], cwd=REPO,
                       capture_output=True, text=True, timeout=30, env=env)
    assert p.returncode == 0 and p.stdout.strip().endswith("bench/_run.py"), p.stdout + p.stderr
