"""Shared fixtures: real data from ``$RADCOT_TEST_DATA`` (default ``../shared/data``), tiny real indexes.

Tests that need a collection skip with a reason when it is absent (users' machines do not have it).
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# radcot keeps "written by radcot" records and content-hash memos under RADCOT_STATE_DIR / RADCOT_CACHE (default:
# the user's ~/.local/state/radcot and ~/.cache/radcot): a test session keeps its own, inherited by every subprocess
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="radcot-test-home-"))
atexit.register(shutil.rmtree, _SESSION_HOME, True)
for _var, _sub in (("RADCOT_STATE_DIR", "state"), ("RADCOT_CACHE", "cache")):
    os.environ.setdefault(_var, str(_SESSION_HOME / _sub))


def _shared_data() -> Path:
    return Path(os.environ.get("RADCOT_TEST_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real test collections; skips when absent."""
    root = _shared_data()
    if not root.is_dir():
        pytest.skip(f"real test data not found at {root} (set RADCOT_TEST_DATA to the shared data folder)")
    return root


def _collection(shared_data: Path, name: str) -> Path:
    path = shared_data / name
    if not (path / "corpus.jsonl").is_file():
        pytest.skip(f"{name} collection not found at {path} (set RADCOT_TEST_DATA)")
    return path


@pytest.fixture(scope="session")
def vaswani(shared_data) -> Path:
    """BEIR-layout Vaswani (11,429 docs, 93 queries)."""
    return _collection(shared_data, "vaswani")


@pytest.fixture(scope="session")
def cranfield(shared_data) -> Path:
    """BEIR-layout Cranfield (1,400 docs, 225 queries)."""
    return _collection(shared_data, "cranfield")


@pytest.fixture(scope="session")
def msmarco_dir(shared_data) -> Path:
    path = shared_data / "msmarco-passage"
    if not path.is_dir():
        pytest.skip(f"msmarco-passage topics/qrels not found at {path}")
    return path


@pytest.fixture(scope="session")
def demo_world() -> Path:
    """The embedded synthetic collection shipped in data/demo (BEIR layout + training queries)."""
    path = REPO / "data" / "demo"
    if not (path / "corpus.jsonl").is_file():
        pytest.fail(f"embedded demo collection missing at {path}: run `radcot make-world --out {path}`")
    return path


@pytest.fixture(scope="session")
def cranfield_bm25_index(cranfield, tmp_path_factory) -> Path:
    """A real Lucene index of Cranfield (title+text), built once per session. Copy it before mutating."""
    from radcot.retrieval.bm25 import BM25Retriever

    out = tmp_path_factory.mktemp("idx") / "cranfield-bm25"
    BM25Retriever.build(cranfield, out)
    return out


@pytest.fixture(scope="session")
def vaswani_bm25_index(vaswani, tmp_path_factory) -> Path:
    """A real Lucene index of Vaswani (title+text), built once per session."""
    from radcot.retrieval.bm25 import BM25Retriever

    out = tmp_path_factory.mktemp("idx") / "vaswani-bm25"
    BM25Retriever.build(vaswani, out)
    return out


@pytest.fixture
def copy_dir(tmp_path):
    """Copy a directory into this test's tmp dir (for session-scoped artefacts a test mutates)."""

    def _copy(src: Path) -> Path:
        dst = tmp_path / Path(src).name
        shutil.copytree(src, dst)
        return dst

    return _copy


# ------------------------------------------------------------------------------------------------ Ctrl-C

_SIGINT_BEFORE = pytest.StashKey[object]()


def _enable_ctrl_c():
    """Give the session (and so every process a test starts) Python's normal SIGINT handling; returns what it had.

    A run started in the background by a non-interactive shell (``make test &`` in a script, ``nohup ... &``)
    begins with SIGINT ignored, and an ignored signal stays ignored in every child: Python then installs no
    KeyboardInterrupt handler there, so the tests that press Ctrl-C on a `radcot` process (or on a child that
    started the JVM) saw it ignored and failed although the code was right (issue #26). A handled signal is
    reset to the default in a child at exec, so each child starts with Ctrl-C working, as in a terminal.
    Returns ``None`` when nothing had to change.
    """
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        return None
    return signal.signal(signal.SIGINT, signal.default_int_handler)


# ------------------------------------------------------------------------------------------------ the fast tier
#
# A test is in the fast tier iff it carries the ``fast`` mark (``make test-fast`` runs ``pytest -m fast``). While a
# fast test's fixtures and body run, the guard below fails it, naming what it did, if it
#   - starts the JVM: imports jnius / pyserini.search / pyserini.index, or calls jnius.autoclass / jnius.cast
#     when another test already started the JVM in this process;
#   - builds a model: constructs any torch.nn.Module (every model, trained or loaded, is one);
#   - starts a process that imports torch or starts the JVM (a `radcot train` or `radcot index` subprocess,
#     `python -c ...`, and their children): _fast_tier/sitecustomize.py reports those from inside the child.
# Details and the reasons: docs/testing.md.

FAST = "fast"
FAST_TIER_DIR = Path(__file__).resolve().parent / "_fast_tier"
#: importing one of these starts the JVM (jnius starts it on import; the pyserini packages import jnius)
_JVM_MODULES = ("jnius", "pyserini.search", "pyserini.index")
_VIOLATIONS = pytest.StashKey[dict]()


class _FastGuard:
    """Watches the process (and the children it starts) while one fast test's setup or call runs.

    It is a ``sys.meta_path`` finder for the whole session that acts only while a fast test runs: it lets
    imports of the JVM modules fail with the reason, and patches ``torch.nn.Module`` when torch is imported.
    """

    def __init__(self) -> None:
        self.test: str | None = None
        self.found: list[str] = []
        self._undo: list = []
        self._busy = False
        self._logdir = Path(tempfile.mkdtemp(prefix="radcot-fast-tier-"))
        self._log = self._logdir / "children.log"

    # ---- activation around one phase of one fast test

    def start(self, test: str) -> None:
        self.test, self.found = test, []
        self._log.unlink(missing_ok=True)
        self._setenv("RADCOT_FAST_TIER_LOG", str(self._log))
        self._setenv("PYTHONPATH", _with_fast_tier_dir(os.environ.get("PYTHONPATH")))
        self._patch(subprocess.Popen, "__init__", self._popen_init(subprocess.Popen.__init__))
        if "jnius" in sys.modules:  # the JVM runs already (an earlier test started it): watch its entry points
            for name in ("autoclass", "cast"):
                self._patch(sys.modules["jnius"], name, self._refuse(f"called jnius.{name} (uses the JVM)"))
        if "torch" in sys.modules:
            self._patch_torch(sys.modules["torch"])

    def stop(self) -> list[str]:
        """Undo every patch; returns what the test did that the fast tier does not allow."""
        while self._undo:
            self._undo.pop()()
        if self._log.is_file():
            for line in self._log.read_text(encoding="utf-8", errors="replace").splitlines():
                what = "starts the JVM" if " imported torch" not in line else "imports torch"
                self.found.append(f"started a process that {what}: {line}")
        self.test = None
        return self.found

    def close(self) -> None:
        shutil.rmtree(self._logdir, ignore_errors=True)

    # ---- what counts

    def _violation(self, what: str) -> None:
        self.found.append(what)
        pytest.fail(_fast_message(self.test, [what]), pytrace=False)

    def _refuse(self, what: str):
        def refused(*args, **kwargs):
            self._violation(what)

        return refused

    def _patch_torch(self, torch) -> None:
        module_init = torch.nn.Module.__init__
        guard = self

        def init(module, *args, **kwargs):
            guard._violation(f"built a torch model ({type(module).__module__}.{type(module).__qualname__})")
            module_init(module, *args, **kwargs)

        self._patch(torch.nn.Module, "__init__", init)

    def _popen_init(self, popen_init):
        """``Popen.__init__`` that gives an explicit ``env=`` the watcher too (an inherited one has it already)."""

        def init(popen, *args, **kwargs):
            env = kwargs.get("env")
            if env is not None:
                kwargs["env"] = {**env, "RADCOT_FAST_TIER_LOG": str(self._log),
                                 "PYTHONPATH": _with_fast_tier_dir(env.get("PYTHONPATH"))}
            popen_init(popen, *args, **kwargs)

        return init

    # ---- the finder

    def find_spec(self, name, path=None, target=None):
        if self.test is None or self._busy or name not in (*_JVM_MODULES, "torch"):
            return None
        self._busy = True
        try:  # the spec the import would get without this finder
            spec = next((s for f in sys.meta_path if f is not self and hasattr(f, "find_spec")
                         for s in [f.find_spec(name, path, target)] if s is not None), None)
        finally:
            self._busy = False
        if spec is None or spec.loader is None:
            return None
        spec.loader = _WatchedLoader(spec.loader, self, name)  # acts when the module runs, not when probed
        return spec

    # ---- helpers

    def _patch(self, owner, name: str, value) -> None:
        old = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
        setattr(owner, name, value)
        self._undo.append(lambda: setattr(owner, name, old))

    def _setenv(self, name: str, value: str) -> None:
        old = os.environ.get(name)
        os.environ[name] = value
        self._undo.append(lambda: os.environ.__setitem__(name, old) if old is not None else os.environ.pop(name, None))


class _WatchedLoader:
    """Runs a watched module's real loader: refuses a JVM module, and patches torch once it has loaded."""

    def __init__(self, inner, guard: _FastGuard, name: str):
        self.inner, self.guard, self.name = inner, guard, name

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self.inner  # the module keeps its own loader
        if self.name != "torch":
            self.guard._violation(f"imported {self.name} (starts the JVM)")
        self.inner.exec_module(module)
        if self.guard.test is not None:
            self.guard._patch_torch(module)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _with_fast_tier_dir(pythonpath: str | None) -> str:
    parts = [p for p in (pythonpath or "").split(os.pathsep) if p and p != str(FAST_TIER_DIR)]
    return os.pathsep.join([str(FAST_TIER_DIR), *parts])


def _fast_message(test: str | None, found: list[str]) -> str:
    return (f"{test} is marked fast, but it {'; and '.join(found)}. The fast tier (make test-fast) starts no JVM, "
            "builds or trains no model and starts no process that imports torch or the JVM: remove the test's "
            "`fast` mark (or its module's `pytestmark = pytest.mark.fast`), or make it cheaper (docs/testing.md)")


_GUARD: _FastGuard | None = None


def pytest_ignore_collect(collection_path, config):
    """Under ``-m fast``, a test file that never spells ``pytest.mark.fast`` has no fast test: it is not imported.

    Importing the test modules is most of the fast tier's time otherwise (torch, transformers, pandas, FastAPI
    and hypothesis come in with them). A fast test's mark must therefore be written in its own file.
    """
    if " ".join(config.option.markexpr.split()) != FAST or collection_path.suffix != ".py":
        return None
    if not collection_path.name.startswith("test_"):
        return None
    try:
        mentions_fast = "pytest.mark.fast" in collection_path.read_text(encoding="utf-8")
    except OSError:
        return None
    return None if mentions_fast else True


def pytest_configure(config):
    global _GUARD
    config.stash[_SUITE_START] = time.perf_counter()
    config.stash[_SIGINT_BEFORE] = _enable_ctrl_c()
    _GUARD = _FastGuard()
    sys.meta_path.insert(0, _GUARD)


def pytest_unconfigure(config):
    if _GUARD is not None:
        if _GUARD in sys.meta_path:
            sys.meta_path.remove(_GUARD)
        _GUARD.close()
    if config.stash.get(_SIGINT_BEFORE, None) is not None:
        signal.signal(signal.SIGINT, config.stash[_SIGINT_BEFORE])


def _guarded(item, when: str):
    """Runs one phase of ``item`` under the guard when it is a fast test; notes what it found."""
    if item.get_closest_marker(FAST) is None or _GUARD is None:
        return (yield)
    clash = [m for m in ("java", "slow") if item.get_closest_marker(m)]
    if clash and when == "setup":
        pytest.fail(f"{item.nodeid} is marked fast and {' and '.join(clash)}: a test is one or the other; "
                    "remove the `fast` mark", pytrace=False)
    _GUARD.start(item.nodeid)
    try:
        return (yield)
    finally:
        found = _GUARD.stop()
        if found:
            item.stash.setdefault(_VIOLATIONS, {})[when] = found


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _guarded(item, "setup"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _guarded(item, "call"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A fast test that did something the tier does not allow fails, even if it caught the guard's exception."""
    report = yield
    found = item.stash.get(_VIOLATIONS, {}).get(call.when)
    if found:
        msg = _fast_message(item.nodeid, found)
        if report.failed and report.longrepr is not None and msg not in str(report.longrepr):
            msg += f"\n\nthe test's own failure:\n{report.longrepr}"
        report.outcome, report.longrepr = "failed", msg
    return report


# ------------------------------------------------------------------------------------------------ suite timing

_SUITE_START = pytest.StashKey[float]()
#: a fast test whose setup + call took longer than this is listed at the end of the run (it is not failed:
#: times on shared machines vary, and a red run that is not a bug teaches people to rerun)
FAST_TEST_BUDGET_S = 1.0


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The slow fast tests, and one line with the suite's counts and wall time (CI keeps it)."""
    tr = terminalreporter
    over = _slow_fast_tests(tr)
    if over:
        tr.write_sep("-", f"fast tests over {FAST_TEST_BUDGET_S:g} s (setup + call)")
        for seconds, nodeid in over:
            tr.write_line(f"{seconds:6.2f}s {nodeid}")
    counts = ", ".join(f"{len(tr.stats[k])} {k}" for k in ("passed", "failed", "error", "skipped", "xfailed",
                                                               "xpassed") if tr.stats.get(k))
    wall = time.perf_counter() - config.stash[_SUITE_START]
    tier = f"-m {config.option.markexpr}" if config.option.markexpr else "all tests"
    load = " (load average %.2f %.2f %.2f)" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    tr.write_line(f"suite: {counts or 'no tests'} in {wall:.1f} s wall, {tier}{load}")


def _slow_fast_tests(tr) -> list[tuple[float, str]]:
    per_test: dict[str, float] = {}
    for reports in tr.stats.values():
        for rep in reports:
            if getattr(rep, "when", None) in ("setup", "call") and FAST in getattr(rep, "keywords", {}):
                per_test[rep.nodeid] = per_test.get(rep.nodeid, 0.0) + rep.duration
    return sorted(((s, n) for n, s in per_test.items() if s > FAST_TEST_BUDGET_S), reverse=True)
