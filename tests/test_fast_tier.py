"""The test machinery in tests/conftest.py, run on small test files in a fresh pytest process: the fast tier's guard
fails a fast test that starts the JVM, builds a model or starts a process that imports torch; ``-m fast`` does
not import files without the mark; and a session started with SIGINT ignored gives its children Ctrl-C back."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

TESTS = Path(__file__).resolve().parent

GUARDED = """
import subprocess, sys
import pytest

pytestmark = pytest.mark.fast


def test_pure():
    assert sum([1, 2]) == 3


def test_light_child():
    subprocess.run([sys.executable, "-c", "import json"], check=True)


def test_jvm():
    import jnius  # noqa: F401


def test_jvm_error_caught():
    try:
        import jnius  # noqa: F401
    except Exception:
        pass


def test_model():
    import torch

    torch.nn.Linear(2, 2)


def test_child_imports_torch():
    subprocess.run([sys.executable, "-c", "import torch"], check=True, env={"PATH": "/usr/bin:/bin"})


@pytest.mark.java
def test_also_java():
    pass
"""


@pytest.fixture
def suite(pytester):
    """A pytester directory with this repository's conftest, its child watcher and the markers of setup.cfg."""
    shutil.copy(TESTS / "conftest.py", pytester.path / "conftest.py")
    shutil.copytree(TESTS / "_fast_tier", pytester.path / "_fast_tier")
    pytester.makeini("[pytest]\nmarkers =\n    fast: fast\n    java: java\n    slow: slow\n")
    return pytester


def _run(path: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rfE", *args], cwd=path,
                          capture_output=True, text=True, timeout=300, **kwargs)


def test_guard_fails_fast_tests_that_start_the_jvm_build_a_model_or_start_a_heavy_process(suite):
    suite.makepyfile(test_guarded=GUARDED)
    out = _run(suite.path, "-m", "fast").stdout
    assert "2 passed, 4 failed, 1 error" in out, out
    for test, what in [("test_jvm", "imported jnius (starts the JVM)"),
                       ("test_jvm_error_caught", "imported jnius (starts the JVM)"),
                       ("test_model", "built a torch model (torch.nn.modules.linear.Linear)"),
                       ("test_child_imports_torch", "started a process that imports torch")]:
        assert f"test_guarded.py::{test} is marked fast, but it {what}" in out, (test, out)
    assert "remove the test's `fast` mark" in out
    assert "test_guarded.py::test_also_java is marked fast and java" in out
    assert "suite: 2 passed, 4 failed, 1 error in" in out and "-m fast" in out


def test_fast_runs_do_not_import_files_without_the_mark(suite):
    suite.makepyfile(test_marked="import pytest\n\n@pytest.mark.fast\ndef test_one():\n    pass\n",
                     test_unmarked="raise RuntimeError('imported although it has no fast test')\n")
    fast = _run(suite.path, "-m", "fast")
    assert fast.returncode == 0 and "1 passed" in fast.stdout, fast.stdout
    everything = _run(suite.path)
    assert everything.returncode != 0 and "imported although it has no fast test" in everything.stdout


def test_a_session_started_with_sigint_ignored_gives_children_ctrl_c(suite):
    suite.makepyfile(test_child="""
import subprocess, sys


def test_child_handles_sigint():
    code = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "True"
""")
    out = _run(suite.path, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))  # as `make test &`
    assert out.returncode == 0 and "1 passed" in out.stdout, out.stdout
