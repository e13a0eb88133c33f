"""`lanmt --help` answers without importing torch, ray or sentencepiece."""

from __future__ import annotations

import subprocess
import sys


def test_help_does_not_import_heavy_libraries():
    code = (
        "import sys; from typer.testing import CliRunner; from lanmt_cli.app import app;"
        "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output;"
        "heavy = [m for m in ('torch', 'ray', 'sentencepiece', 'numpy', 'sacrebleu') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_console_script_help_lists_the_commands():
    out = subprocess.run(
        [sys.executable, "-m", "lanmt_cli.app", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    for name in ("translate", "train", "prepare"):
        assert name in out.stdout
