"""``make bench``: run every benchmark in ``bench/`` this machine can run; one line for each it skips, with why.

A benchmark that needs a CUDA GPU is skipped where torch sees none; one that reads the team's real test data
(``$RADCOT_TEST_DATA``, default ``../shared/data``, as ``tests/conftest.py``) is skipped where the collections it
reads are missing. The others run one after the other (a failure does not stop the rest); the exit status is 0
only if every benchmark that ran exited 0, 1 otherwise. Files whose names start with ``_`` are not benchmarks.

Example::

    python bench/_run.py              # what make bench runs
    python bench/_run.py --dry-run    # only say what would run and what is skipped
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping, NamedTuple

REPO = Path(__file__).resolve().parents[1]

#: benchmark file -> what it needs besides radcot: "gpu" (a CUDA device) or "data:NAME" (a collection of the test data)
NEEDS: Mapping[str, tuple[str, ...]] = {
    "gpu_ddp_smoke.py": ("gpu",),
    "gpu_student.py": ("gpu",),
    "bm25_run_generation.py": ("data:vaswani",),
    "reproduction_cost.py": ("data:vaswani", "data:msmarco-passage"),
    "student_generation.py": ("data:cranfield",),
    "teacher_expansion.py": ("data:vaswani", "data:cranfield"),
    "teacher_throughput.py": ("data:vaswani",),
}


class Planned(NamedTuple):
    """One benchmark and why it is skipped (``None``: it runs)."""

    path: Path
    skip: str | None


def data_root(env: Mapping[str, str] = os.environ) -> Path:
    """The test data folder: ``$RADCOT_TEST_DATA``, else ``../shared/data`` beside the repository."""
    return Path(env.get("RADCOT_TEST_DATA") or REPO.parent / "shared" / "data")


def gpu_missing() -> str | None:
    """Why no CUDA GPU can be used here (``None`` when one can)."""
    try:
        import torch
    except ImportError:
        return "no GPU: torch is not installed"
    if not torch.cuda.is_available():
        return f"no GPU: torch {torch.__version__} sees no CUDA device"
    return None


def skip_reason(needs: tuple[str, ...], no_gpu: str | None, root: Path) -> str | None:
    """Why a benchmark with ``needs`` cannot run here, or ``None``.

    >>> skip_reason(("data:vaswani",), None, Path("/nonexistent"))
    'no test data: set RADCOT_TEST_DATA (/nonexistent/vaswani not found)'
    """
    if "gpu" in needs and no_gpu:
        return no_gpu
    missing = [root / n.split(":", 1)[1] for n in needs if n.startswith("data:") and not (root / n.split(":", 1)[1]).is_dir()]
    if missing:
        return f"no test data: set RADCOT_TEST_DATA ({', '.join(map(str, missing))} not found)"
    return None


def plan(bench_dir: Path, no_gpu: str | None, root: Path) -> list[Planned]:
    """Every benchmark in ``bench_dir`` (sorted by name) with its skip reason."""
    paths = sorted(p for p in bench_dir.glob("*.py") if not p.name.startswith("_"))
    return [Planned(p, skip_reason(NEEDS.get(p.name, ()), no_gpu, root)) for p in paths]


def run(planned: list[Planned], dry_run: bool = False) -> int:
    """Run the benchmarks that can run; 0 when each exited 0, else 1 (the failed ones are named at the end)."""
    failed = []
    for p in planned:
        if p.skip:
            print(f"== {p.path.relative_to(p.path.parent.parent)}: skipped ({p.skip})", flush=True)
            continue
        print(f"== {p.path.relative_to(p.path.parent.parent)}" + (": would run" if dry_run else ""), flush=True)
        if not dry_run and subprocess.run([sys.executable, str(p.path)], cwd=REPO).returncode != 0:
            failed.append(p.path.name)
    ran, skipped = sum(not p.skip for p in planned), sum(bool(p.skip) for p in planned)
    print(f"bench: {ran} {'to run' if dry_run else 'ran'}, {skipped} skipped"
          + (f", failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/_run.py", description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true", help="say what would run and what is skipped; run nothing")
    p.add_argument("--bench-dir", type=Path, default=REPO / "bench", help="the benchmarks' folder (default bench/)")
    args = p.parse_args(argv)
    needs_gpu = any("gpu" in NEEDS.get(b.name, ()) for b in args.bench_dir.glob("*.py"))
    return run(plan(args.bench_dir, gpu_missing() if needs_gpu else None, data_root()), args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
