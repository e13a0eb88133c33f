"""What an install without an extra can do, and the one line it gets where it needs one.

Ray (`lanmt[train]`) runs training on Ray workers; matplotlib (`lanmt[plot]`) draws
`lanmt bench --plot`. Each `lanmt` here runs in a fresh interpreter where a finder placed
first on `sys.meta_path` refuses to import the missing package, as an install without it
would; everything else is lanmt as installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lanmt_cli.trainers.stages import RAY_MISSING
from tests.test_train_loop import prepare_tiny_data

ROOT = Path(__file__).resolve().parent.parent
# python -c NOT_INSTALLED PACKAGES ARGS...: `lanmt ARGS` without the comma-separated PACKAGES
NOT_INSTALLED = """
import sys

missing = set(sys.argv.pop(1).split(","))


class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in missing:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
sys.argv[0] = "lanmt"
from lanmt_cli.app import main

main()
"""
TINY = ["--hidden", "16", "--layers", "1", "--heads", "2", "--ffn", "32", "--max-tokens", "512"]


def lanmt_without(missing: str, *args, input: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", NOT_INSTALLED, missing, *map(str, args)],
        input=input, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepare_tiny_data(tmp_path_factory.mktemp("extras") / "data")


@pytest.mark.parametrize("launch", [["--workers", "2"], ["--ray"], ["--ray-address", "auto"]])
def test_training_on_ray_workers_without_ray_says_what_to_install(data_dir, tmp_path, launch):
    run = tmp_path / "run"
    done = lanmt_without("ray", "train", "--data", data_dir, "--out", run, *launch)
    assert done.returncode == 1
    assert done.stderr == f"error: {RAY_MISSING}\n"
    assert 'pip install "lanmt[train]"' in RAY_MISSING
    assert not run.exists()


def test_training_in_this_process_needs_no_ray(data_dir, tmp_path):
    run = tmp_path / "run"
    done = lanmt_without(
        "ray", "train", "--stage", "teacher", "--data", data_dir, "--out", run, *TINY,
        "--max-steps", "2", "--valid-every", "2", "--bleu-sents", "5", "--gpus", "0",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"model: {run / 'teacher' / 'best'}\n"


def test_translation_needs_neither_ray_nor_matplotlib(tiny_bundle):
    done = lanmt_without("ray,matplotlib", "translate", "-m", tiny_bundle, input="red dog\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hund rot\n"


def test_plot_without_matplotlib_says_what_to_install(tiny_bundle, tmp_path):
    src = tmp_path / "src.en"
    src.write_text("red dog\n")
    done = lanmt_without(
        "matplotlib", "bench", "-m", tiny_bundle, "--src", src, "--ref", src, "--evaluate",
        "--plot", tmp_path / "plot.png",
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr == 'error: --plot needs matplotlib: pip install "lanmt[plot]"\n'
    assert not (tmp_path / "plot.png").exists()
