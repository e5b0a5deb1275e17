"""The public API: every export resolves, and importing radcot stays light (no JVM, torch or FAISS)."""
from __future__ import annotations

import subprocess
import sys

import radcot


def test_every_export_resolves():
    for name in radcot.__all__:
        assert getattr(radcot, name) is not None, name


def test_import_is_light():
    code = ("import sys, radcot, radcot.cli, radcot.pipeline, radcot.report, radcot.evaluation; "
            "heavy = [m for m in ('jnius', 'torch', 'faiss', 'transformers', 'pyserini') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_cli_help_lists_commands_and_is_light():
    code = ("import sys; from radcot.cli import main; rc = main(['--help']); "
            "print('HEAVY', [m for m in ('jnius', 'torch', 'faiss') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    for cmd in ("index", "search", "evaluate", "teach", "train", "generate", "expand", "run", "table"):
        assert f"  {cmd}" in out.stdout
    assert "HEAVY []" in out.stdout
