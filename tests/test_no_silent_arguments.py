"""Issue 9 class 7: every out-of-range number, whitespace id or bad value is refused at the CLI boundary with
one line and exit 2; user mistakes after parsing are one line and exit 1; RADCOT_DEBUG=1 shows tracebacks."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from radcot.cli import main
from radcot.cli import _args

BASE = {
    "search": ["--index", "I", "--queries", "Q", "--run", "R"],
    "index": ["--collection", "C", "--index", "I"],
    "teach": ["--backend", "kb", "--queries", "Q", "--out", "O"],
    "build-data": ["--queries", "Q", "--teacher-out", "C", "--index", "I", "--out", "O"],
    "train": ["--data", "D", "--model", "tiny-t5", "--out", "O"],
    "generate": ["--student", "S", "--queries", "Q", "--out", "O"],
    "expand": ["--cots", "C", "--queries", "Q", "--out", "O"],
    "make-world": ["--out", "O"],
    "teacher-serve": ["--backend", "kb", "--backend-arg", "world=W"],
    "evaluate": ["--qrels", "Q", "--run", "R"],
}

BAD = [
    ("search", "--bm25-b", "5"), ("search", "--bm25-b", "-0.1"), ("search", "--bm25-k1", "-1"),
    ("search", "--bm25-k1", "nan"), ("search", "--k", "0"), ("search", "--k", "ten"), ("search", "--threads", "0"),
    ("search", "--max-query-terms", "0"), ("search", "--rm3-fb-terms", "0"), ("search", "--rm3-fb-docs", "-2"),
    ("search", "--rm3-weight", "1.5"), ("search", "--tag", "my run"), ("search", "--tag", ""),
    ("search", "--heap", "lots"),
    ("index", "--threads", "0"), ("index", "--batch-size", "0"), ("index", "--heap", "0g"),
    ("teach", "--concurrency", "0"), ("teach", "--max-attempts", "0"), ("teach", "--max-tokens", "0"),
    ("teach", "--temperature", "-1"), ("teach", "--temperature", "inf"), ("teach", "--top-p", "0"),
    ("teach", "--top-p", "1.5"), ("teach", "--timeout", "0"), ("teach", "--batch-size", "0"),
    ("teach", "--limit", "0"), ("teach", "--max-examples", "0"), ("teach", "--threads", "0"),
    ("teach", "--max-failed-fraction", "2"), ("teach", "--seed", "-1"),
    ("build-data", "--k", "0"), ("build-data", "--dev-fraction", "1.5"), ("build-data", "--dev-fraction", "1"),
    ("build-data", "--dev-fraction", "nan"), ("build-data", "--seed", "x"),
    ("train", "--steps", "0"), ("train", "--lr", "nan"), ("train", "--lr", "0"), ("train", "--batch-size", "0"),
    ("train", "--grad-accum", "0"), ("train", "--weight-decay", "-0.1"), ("train", "--clip", "-1"),
    ("train", "--warmup-steps", "-1"), ("train", "--n-context", "0"), ("train", "--text-maxlength", "0"),
    ("train", "--target-maxlength", "0"), ("train", "--eval-every", "-1"), ("train", "--save-every", "0"),
    ("train", "--keep-checkpoints", "0"), ("train", "--log-every", "0"), ("train", "--stop-after", "0"),
    ("train", "--eval-max-examples", "0"), ("train", "--eval-max-new-tokens", "0"),
    ("generate", "--k", "0"), ("generate", "--max-new-tokens", "0"), ("generate", "--batch-size", "0"),
    ("generate", "--num-beams", "0"), ("generate", "--temperature", "0"), ("generate", "--top-p", "2"),
    ("generate", "--num-return-sequences", "0"), ("generate", "--no-repeat-ngram-size", "-1"),
    ("generate", "--repetition-penalty", "0"), ("generate", "--limit", "0"),
    ("expand", "--samples", "0"), ("expand", "--k", "0"), ("expand", "--max-new-tokens", "0"),
    ("expand", "--batch-size", "0"), ("expand", "--max-unexpanded-fraction", "-0.5"),
    ("make-world", "--scale", "0"), ("make-world", "--scale", "nan"), ("make-world", "--n-test", "0"),
    ("make-world", "--train-paraphrases", "0"),
    ("teacher-serve", "--port", "-1"), ("teacher-serve", "--port", "65536"), ("teacher-serve", "--port", "http"),
    ("teacher-serve", "--batch-size", "0"), ("teacher-serve", "--batch-wait-ms", "-5"),
    ("teacher-serve", "--batch-wait-ms", "nan"), ("teacher-serve", "--threads", "0"),
    ("teacher-serve", "--max-input-tokens", "0"), ("teacher-serve", "--dtype", "fp8"),
    ("evaluate", "--metrics", "nDCG@ten"), ("evaluate", "--metrics", "MAP@x"),
]


@pytest.mark.fast
@pytest.mark.parametrize("cmd,flag,value", BAD, ids=[f"{c} {f} {v}" for c, f, v in BAD])
def test_bad_value_is_one_line_and_exit_2(cmd, flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        main([cmd, *BASE[cmd], flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"radcot {cmd}: error: argument {flag}") and repr(value) in err


@pytest.mark.fast
def test_every_numeric_flag_of_every_command_is_checked():
    """No parser of these commands keeps a bare int/float type (those accept 0, -1, nan)."""
    seen = []
    real = argparse.ArgumentParser.add_argument

    def spy(self, *names, **kw):
        if kw.get("type") in (int, float):
            seen.append((self.prog, names))
        return real(self, *names, **kw)

    argparse.ArgumentParser.add_argument = spy
    argparse._ArgumentGroup.add_argument = spy
    try:
        for cmd in BASE:
            with pytest.raises(SystemExit):
                main([cmd, "--help"])
    finally:
        argparse.ArgumentParser.add_argument = real
        argparse._ArgumentGroup.add_argument = real
    assert not seen, seen


@pytest.mark.parametrize("parse,good,bad", [
    (_args.positive_int, "3", ["0", "-1", "1.5", "x"]),
    (_args.non_negative_int, "0", ["-1", ""]),
    (_args.finite_float, "-2.5", ["nan", "inf", "-inf", "x"]),
    (_args.fraction, "1", ["1.01", "-0.01", "nan"]),
    (_args.open_fraction, "0.5", ["0", "1"]),
    (_args.token, "run-1", ["a b", "", "tab\there"]),
    (_args.heap_size, "512m", ["512", "g", "0g", "-1g"]),
    (_args.port, "0", ["-1", "65536", "80.5", "http"]),
])
@pytest.mark.fast
def test_type_functions(parse, good, bad):
    parse(good)
    for value in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            parse(value)


def _radcot(*args: str, debug: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "RADCOT_DEBUG": "1" if debug else ""}
    return subprocess.run([sys.executable, "-m", "radcot", *args], capture_output=True, text=True, env=env,
                          timeout=120)


@pytest.mark.fast
def test_user_mistakes_are_one_line_and_radcot_debug_shows_the_traceback(tmp_path):
    missing = tmp_path / "no-such-queries.tsv"
    argv = ("expand", "--cots", str(tmp_path / "c.tsv"), "--queries", str(missing), "--out", str(tmp_path / "e.tsv"))
    proc = _radcot(*argv)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if "radcot expand: error:" in ln]
    assert len(lines) == 1 and str(missing) in lines[0]
    proc = _radcot(*argv, debug=True)
    assert proc.returncode == 1 and "Traceback" in proc.stderr


def test_broken_pipe_exits_quietly(tmp_path):
    """`radcot ... | head -1`: the reader closes the pipe early; radcot exits 0 without a traceback."""
    queries, cots = tmp_path / "q.tsv", tmp_path / "c.tsv"
    queries.write_text("".join(f"{i}\tquery {i}\n" for i in range(300)), encoding="utf-8")
    cots.write_text("".join(f"{i}\tcot {i}\n" for i in range(300)), encoding="utf-8")
    cmd = (f"{sys.executable} -m radcot teach --backend replay --replay-file {cots} --queries {queries} "
           f"--out {tmp_path / 'o.jsonl'} --no-progress | head -c 0")
    proc = subprocess.run(["bash", "-c", f"set -o pipefail; {cmd}"], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr
