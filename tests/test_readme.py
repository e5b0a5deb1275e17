"""README.md stays true: its shell and Python blocks run as written, in order, on a copy of the clone.

Every fenced block of README.md tagged ``sh``, ``bash`` or ``python`` runs, unless the line just above its fence
(blank lines aside) is a marker ``<!-- readme-test: skip (REASON) -->``; each skipped block is reported as a
skipped test with its reason (``pytest -ra`` lists them). A block that shows a failure is marked
``<!-- readme-test: exit N -->``: it must exit with N, and print no Python traceback. The blocks of one ``## `` section (a guide) run in one
bash process, in README order, with ``set -e -o pipefail`` (Python blocks as ``python - <<EOF`` inside it), so a
variable or a background server of one block is there for the next, as in a terminal; the sections run one after
the other on the same copy (guide 2 serves the student of guide 1).

The copy holds the files ``git ls-files`` names (so untracked files of the developer's tree cannot make it pass),
``radcot`` and ``python`` are the interpreter's (its bin directory first on ``PATH``, the copy first on
``PYTHONPATH``), and the machine is offline for radcot (``RADCOT_OFFLINE=1``, ``HF_HUB_OFFLINE=1``, an empty
``IR_DATASETS_HOME``). Each section runs in a process group of its own, killed at the end whatever happened, so a
server a block started in the background never outlives the test. If the README's port is taken on this machine,
the section runs with a free one in its place.

Also checked (fast): every relative link of README.md names a tracked file or directory, README.md has no
``../shared`` path, every fence says its language, every marker is well formed and sits on a runnable block, and
the flags of ``radcot`` commands in skipped blocks exist.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
RUNNABLE = ("sh", "bash", "python")
#: languages a fence may name without being run (output samples, configs)
SHOWN = ("text", "yaml", "json")
MARKER = re.compile(r"<!--\s*readme-test:\s*(?P<body>.*?)\s*-->")
SKIP = re.compile(r"skip \((?P<reason>[^()]*(?:\([^()]*\)[^()]*)*)\)")
EXIT = re.compile(r"exit (?P<status>[1-9][0-9]*)")
FENCE = re.compile(r"^```(?P<lang>\S*)\s*$")
#: seconds one section may take (guide 1 trains a student: ~5 min at OMP_NUM_THREADS=1 on 2 loaded cores)
SECTION_TIMEOUT_S = 1500
#: the port the README's serve examples use
README_PORT = 8731


@dataclasses.dataclass(frozen=True)
class Block:
    """One fenced block of the README."""

    lang: str
    code: str
    line: int  # 1-based line of the opening fence
    section: str  # the ``## `` heading above it
    skip: str | None  # the marker's reason, or None: the block runs
    marker: str | None  # the marker's text, whatever it says
    exit: int = 0  # the exit status the block must end with (marker ``exit N``: a failure the README shows)


def parse_blocks(text: str) -> list[Block]:
    """Every fenced block of ``text`` with its section and its ``readme-test`` marker.

    Raises:
        ValueError: a fence is never closed.
    """
    blocks, section, lines = [], "(top)", text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        m = FENCE.match(line)
        if not m:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].rstrip() == "```"), None)
        if end is None:
            raise ValueError(f"README.md line {i + 1}: the fence opened here is never closed")
        marker = _marker_above(lines, i)
        skip, status = None, 0
        if marker is not None:
            s, e = SKIP.fullmatch(marker), EXIT.fullmatch(marker)
            skip = s.group("reason") if s else None
            status = int(e.group("status")) if e else 0
        blocks.append(Block(m.group("lang"), "\n".join(lines[i + 1:end]) + "\n", i + 1, section, skip, marker,
                            status))
        i = end + 1
    return blocks


def _marker_above(lines: list[str], fence: int) -> str | None:
    j = fence - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    m = MARKER.fullmatch(lines[j].strip()) if j >= 0 else None
    return m.group("body") if m else None


def _blocks() -> list[Block]:
    return parse_blocks(README.read_text(encoding="utf-8"))


def _runnable(blocks: list[Block]) -> list[Block]:
    return [b for b in blocks if b.lang in RUNNABLE and b.skip is None]


def _sections() -> list[str]:
    seen: list[str] = []
    for b in _runnable(_blocks()):
        if b.section not in seen:
            seen.append(b.section)
    return seen


def _skipped() -> list[Block]:
    return [b for b in _blocks() if b.lang in RUNNABLE and b.skip is not None]


# ---------------------------------------------------------------------------------------------- static checks


def _tracked() -> set[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"not a git checkout ({out.stderr.strip()[:200]}): the README test copies the tracked files")
    return set(filter(None, out.stdout.split("\0")))


LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")
CODE_SPAN = re.compile(r"`[^`]*`")


def _prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced blocks, with inline code spans blanked (``rows[0](bm25)`` is no link)."""
    lines, fenced = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line) or (fenced and line.rstrip() == "```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append((n, CODE_SPAN.sub("``", line)))
    return lines


@pytest.mark.fast
def test_relative_links_name_tracked_files():
    tracked = _tracked()
    dirs = {str(Path(f).parent) for f in tracked} | {p for f in tracked for p in map(str, Path(f).parents)}
    bad = []
    for n, line in _prose_lines(README.read_text(encoding="utf-8")):
        for m in LINK.finditer(line):
            target = m.group("target").split("#", 1)[0]
            if not target or re.match(r"^[a-z][a-z0-9+.-]*:", target):
                continue  # an anchor in this file, or a URL
            path = os.path.normpath(target)
            if path.startswith("..") or os.path.isabs(path):
                bad.append(f"line {n}: {target} points outside the repository")
            elif path not in tracked and path.rstrip("/") not in dirs:
                bad.append(f"line {n}: {target} is not a file or directory of the repository (git ls-files)")
    assert not bad, "README.md links:\n" + "\n".join(bad)


@pytest.mark.fast
def test_no_shared_data_paths():
    hits = [f"line {n}: {line.strip()}" for n, line in enumerate(README.read_text(encoding="utf-8").splitlines(), 1)
            if "../shared" in line or "/work/" in line]
    assert not hits, "README.md names paths that exist only on the developers' machines:\n" + "\n".join(hits)


@pytest.mark.fast
def test_fences_name_their_language_and_markers_are_well_formed():
    blocks = _blocks()
    assert _runnable(blocks), "README.md has no block to run"
    problems = [f"line {b.line}: a fence without a language (say sh, bash, python, or text for output)"
                for b in blocks if not b.lang]
    problems += [f"line {b.line}: language {b.lang!r} is neither run ({', '.join(RUNNABLE)}) nor shown "
                 f"({', '.join(SHOWN)})" for b in blocks if b.lang and b.lang not in RUNNABLE + SHOWN]
    problems += [f"line {b.line}: marker {b.marker!r} is neither 'skip (REASON)' nor 'exit N'"
                 for b in blocks if b.marker is not None and b.skip is None and b.exit == 0]
    problems += [f"line {b.line}: an 'exit N' marker on a {b.lang} block (only sh and bash blocks)"
                 for b in blocks if b.exit and b.lang not in ("sh", "bash")]
    problems += [f"line {b.line}: a readme-test marker on a {b.lang} block, which never runs anyway"
                 for b in blocks if b.marker is not None and b.lang not in RUNNABLE]
    problems += [f"line {b.line}: skip marker without a reason" for b in blocks if b.skip is not None
                 and not b.skip.strip()]
    text = README.read_text(encoding="utf-8")
    on_blocks = {b.line for b in blocks if b.marker is not None}
    for n, line in enumerate(text.splitlines(), 1):
        if MARKER.fullmatch(line.strip()) and not any(n < fence <= n + 3 for fence in on_blocks):
            problems.append(f"line {n}: a readme-test marker that is not just above a fence")
    assert not problems, "README.md:\n" + "\n".join(problems)


@pytest.mark.parametrize("block", _skipped(), ids=lambda b: f"line{b.line}")
def test_skipped_block(block: Block):
    """Each skipped block is listed with its reason; its shell syntax and its Python still have to parse."""
    if block.lang == "python":
        compile(block.code, f"README.md:{block.line}", "exec")
    else:
        p = subprocess.run(["bash", "-n"], input=block.code, capture_output=True, text=True)
        assert p.returncode == 0, f"README.md line {block.line}: not valid shell: {p.stderr}"
    pytest.skip(f"README.md line {block.line} ({block.section}): {block.skip}")


def _radcot_commands(code: str) -> list[list[str]]:
    """``radcot SUB --flag ...`` (also ``-m radcot SUB``) argument lists of a shell block, continuations joined."""
    joined = code.replace("\\\n", " ")
    commands = []
    for line in joined.splitlines():
        line = line.split(" #", 1)[0]
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        for i, w in enumerate(words):
            if w == "radcot" and (i == 0 or words[i - 1] == "-m") and i + 1 < len(words):
                commands.append(words[i + 1:])
                break
    return commands


def test_flags_of_skipped_radcot_commands_exist():
    """A command that cannot run here must still name options radcot has (``radcot SUB --help`` lists them)."""
    env = _env_for(REPO, REPO / ".no-such-dir")
    helps: dict[tuple[str, ...], str] = {}
    missing = []
    for block in _skipped():
        if block.lang == "python":
            continue
        for words in _radcot_commands(block.code):
            sub = tuple(words[:2]) if words[0] == "cache" else (words[0],)
            if sub not in helps:
                p = subprocess.run([sys.executable, "-m", "radcot", *sub, "--help"], capture_output=True, text=True,
                                   env=env, cwd=REPO, timeout=120)
                assert p.returncode == 0, f"radcot {' '.join(sub)} --help failed: {p.stderr[-500:]}"
                helps[sub] = p.stdout
            for flag in (w.split("=", 1)[0] for w in words if w.startswith("--")):
                if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[sub]):
                    missing.append(f"line {block.line}: radcot {' '.join(sub)} has no option {flag}")
    assert not missing, "README.md:\n" + "\n".join(missing)


# ------------------------------------------------------------------------------------------ running the guides


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A copy of the tracked files of the repository (as they are in the working tree)."""
    tracked = _tracked()
    root = tmp_path_factory.mktemp("readme") / "radcot"
    for name in sorted(tracked):
        src = REPO / name
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree, not yet committed
        dst = root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)
    return root


def _env_for(root: Path, scratch: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RADCOT_RUNS_DIR", "PYTHONSTARTUP")}
    env.update(
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        PYTHONPATH=os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")])),
        RADCOT_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
        IR_DATASETS_HOME=str(scratch / "ir_datasets"), README_SCRATCH=str(scratch),
        RADCOT_STATE_DIR=str(scratch / "state"), RADCOT_CACHE=str(scratch / "cache"),
    )
    return env


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PY_END = "RADCOT_README_PYTHON_BLOCK"


def section_script(blocks: list[Block], port: int = README_PORT) -> str:
    """One bash script for the runnable blocks of a section; on failure it names the block's README line."""
    parts = ["set -e -o pipefail",
             "trap 'rc=$?; [ $rc -eq 0 ] || echo \"readme-test: the block at README.md line $README_LINE failed "
             "(exit $rc)\" >&2' EXIT"]
    for b in blocks:
        code = b.code if port == README_PORT else b.code.replace(str(README_PORT), str(port))
        parts.append(f"README_LINE={b.line}; echo \"readme-test: README.md line {b.line} at $SECONDS s\" >&2")
        if b.lang == "python":
            assert PY_END not in code
            parts.append(f"python - <<'{PY_END}'\n{code}{PY_END}")
        elif b.exit:
            parts.append(_expect_failure(code, b.exit))
        else:
            parts.append(code)
    return "\n".join(parts) + "\n"


def _expect_failure(code: str, status: int) -> str:
    """The block in a subshell that must exit with ``status`` and print no Python traceback (a user mistake is one
    line, never a traceback)."""
    return (f"set +e\n( set -e -o pipefail\n{code}) 2> \"$README_SCRATCH/stderr\"\nrc=$?\nset -e\n"
            f"cat \"$README_SCRATCH/stderr\" >&2\n"
            f"[ $rc -eq {status} ] || {{ echo \"readme-test: expected exit {status}, got $rc\" >&2; false; }}\n"
            f"! grep -q '^Traceback' \"$README_SCRATCH/stderr\" || "
            f"{{ echo 'readme-test: a traceback instead of a one-line error' >&2; false; }}")


def _alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _kill_group(pgid: int) -> bool:
    """SIGTERM the process group, then SIGKILL what is left; returns whether any process was still there."""
    if not _alive(pgid):
        return False
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _alive(pgid):
            time.sleep(0.1)
        if not _alive(pgid):
            break
    return True


@dataclasses.dataclass
class SectionRun:
    """How one section went."""

    rc: int | None  # None: timed out
    out: str
    err: str
    seconds: float
    left_running: bool  # processes of the section were still there when bash ended

    def tail(self) -> str:
        return f"\n--- stdout (end) ---\n{self.out[-3000:]}\n--- stderr (end) ---\n{self.err[-6000:]}"


def run_section(root: Path, blocks: list[Block], scratch: Path, timeout: float = SECTION_TIMEOUT_S) -> SectionRun:
    """Run one section's blocks in one bash process group; the group is killed afterwards whatever happened."""
    port = README_PORT if _port_free(README_PORT) else _free_port()
    script = section_script(blocks, port)
    start = time.monotonic()
    proc = subprocess.Popen(["bash", "-c", script], cwd=root, env=_env_for(root, scratch), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    rc = None
    try:
        out, err = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # bash too: it cannot be reaped (and stop counting as alive) before
        out, err = proc.communicate()
    finally:
        left = _kill_group(proc.pid)
    return SectionRun(rc, out, err, time.monotonic() - start, left)


@pytest.fixture(scope="module")
def sections(clone, tmp_path_factory) -> dict[str, SectionRun]:
    """The sections run so far on ``clone`` (a later guide uses what an earlier one made)."""
    return {}


def _run_through(section: str, clone: Path, done: dict[str, SectionRun], scratch: Path) -> SectionRun:
    """Run every section up to ``section`` that has not run yet, in README order (a guide may use what an earlier
    one made, as a reader following the README would have it)."""
    order = _sections()
    for name in order[:order.index(section) + 1]:
        if name not in done:
            done[name] = run_section(clone, [b for b in _runnable(_blocks()) if b.section == name], scratch)
    return done[section]


@pytest.mark.slow
@pytest.mark.java
@pytest.mark.timeout(3 * SECTION_TIMEOUT_S)
@pytest.mark.parametrize("section", _sections())
def test_readme_section_runs_as_written(clone, sections, section, tmp_path_factory):
    run = _run_through(section, clone, sections, tmp_path_factory.mktemp("scratch"))
    lines = ", ".join(str(b.line) for b in _runnable(_blocks()) if b.section == section)
    print(f"README section {section!r} (blocks at lines {lines}): exit {run.rc} in {run.seconds:.0f} s")
    print(run.out)
    print("\n".join(line for line in run.err.splitlines() if line.startswith("readme-test:")))
    assert run.rc is not None, f"section {section!r} ran over {SECTION_TIMEOUT_S} s{run.tail()}"
    failed_before = [name for name, r in sections.items() if name != section and r.rc != 0
                     and _sections().index(name) < _sections().index(section)]
    before = f" (earlier sections failed too, and this one may need what they make: {failed_before})" * bool(
        failed_before)
    assert run.rc == 0, f"section {section!r} failed (exit {run.rc}){before}{run.tail()}"
    assert not run.left_running, (f"section {section!r} left processes running after its last block (a server "
                                  f"not stopped?); the test killed them{run.tail()}")
