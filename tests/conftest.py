"""Shared fixtures: a tiny LaNMT bundle (with its teacher) trained once per test session.

Tests run torch on one thread (and so do the `lanmt` processes they start): the models are
tiny, and on a busy machine two threads were 17x slower than one. LANMT_TEST_THREADS=N
asks for N.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

THREADS = os.environ.get("LANMT_TEST_THREADS", "1")
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = THREADS  # inherited by every subprocess the tests start


def pytest_configure(config) -> None:
    import torch

    torch.set_num_threads(int(THREADS))


ROOT = Path(__file__).resolve().parent.parent
# The full Multi30k text files (tests/data holds a small part): $LANMT_MULTI30K, else
# shared/data/multi30k beside the checkout, as the benchmarks find them.
MULTI30K = Path(os.environ.get("LANMT_MULTI30K") or ROOT.parent / "shared" / "data" / "multi30k")
# The cached bundle is rebuilt whenever the code that defines or trains it changes.
_SOURCES = [
    "tests/tiny.py", "lanmt_cli/model.py", "lanmt_cli/teacher.py", "lanmt_cli/layers.py",
    "lanmt_cli/config.py", "lanmt_cli/bundle.py", "lanmt_cli/tokenizer.py",
]  # fmt: skip


def _code_key() -> str:
    h = hashlib.sha256()
    for name in _SOURCES:
        h.update((ROOT / name).read_bytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tokenizer, teacher and LaNMT trained on the synthetic task (see tests/tiny.py)."""
    from tests.tiny import train_tiny_models

    return train_tiny_models(tmp_path_factory.mktemp("tiny-train"))


@pytest.fixture(scope="session")
def tiny_bundle(request, tmp_path_factory) -> Path:
    """A LaNMT bundle directory with its teacher in `teacher/`. Read-only: copy to modify."""
    cache = Path(request.config.cache.mkdir("tiny-bundle")) / _code_key()
    if not (cache / "config.json").is_file():
        from lanmt_cli.bundle import save_bundle

        models = request.getfixturevalue("tiny_models")
        work = tmp_path_factory.mktemp("tiny-bundle")
        langs = {"src": "en", "tgt": "de"}
        teacher = save_bundle(work / "teacher", models.teacher, models.tokenizer, languages=langs)
        save_bundle(cache, models.lanmt, models.tokenizer, teacher=teacher, languages=langs)
        shutil.rmtree(work)
    return cache


@pytest.fixture(scope="session")
def tiny_task() -> list[tuple[str, str]]:
    """Held-out (source, reference) pairs of the synthetic task."""
    from tests.tiny import make_task

    return make_task(50, seed=12345)


@pytest.fixture(scope="session")
def multi30k() -> Path:
    """The folder of Multi30k's files (test_2016_flickr.en.gz, ...); the test skips, saying
    where it looked, when they are not there."""
    if not (MULTI30K / "test_2016_flickr.en.gz").is_file():
        pytest.skip(f"no Multi30k in {MULTI30K} (set LANMT_MULTI30K to its folder)")
    return MULTI30K


@pytest.fixture
def tiny_bundle_copy(tiny_bundle, tmp_path) -> Path:
    dest = tmp_path / "model"
    shutil.copytree(tiny_bundle, dest)
    return dest


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A private lanmt data folder; no index or mirror from the environment."""
    monkeypatch.setenv("LANMT_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("LANMT_INDEX", raising=False)
    monkeypatch.delenv("LANMT_MIRROR", raising=False)
    return tmp_path / "home"


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Converted teachers (lanmt_cli.ct2) go to a session folder, not the user's cache."""
    import os

    before = os.environ.get("LANMT_CACHE")
    os.environ["LANMT_CACHE"] = str(tmp_path_factory.mktemp("lanmt-cache"))
    yield
    if before is None:
        os.environ.pop("LANMT_CACHE", None)
    else:
        os.environ["LANMT_CACHE"] = before


@pytest.fixture
def full_disk(tmp_path) -> Path:
    """A folder on a file system with no room left: a small tmpfs, filled up.

    Mounting needs root on Linux (as CI runs); elsewhere the test is skipped.
    """
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        pytest.skip("a full file system is a tmpfs mounted by root on Linux")
    folder = tmp_path / "full"
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)]
    done = subprocess.run(mount, capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, bytes(4096)):
                pass
        except OSError:  # no space left: as meant
            pass
        finally:
            os.close(fd)
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=True)
