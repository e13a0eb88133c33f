"""Training and preparation under faults (issue 14): locks, option errors before anything
starts, pipes as inputs, checkpoints that cannot be written, Ctrl-C on Ray workers.

Runs that must be separate processes (a second writer, signals, a file-size limit) are real
`lanmt` subprocesses.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from lanmt_cli.app import app
from lanmt_cli.data import read_meta
from lanmt_cli.trainers.checkpoint import read_position
from tests.processes import cli, wait_for
from tests.test_train_loop import prepare_tiny_data
from tests.tiny import make_task

ROOT = Path(__file__).resolve().parent.parent
POSIX = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals, FIFOs and limits")
TINY = ["--hidden", "32", "--layers", "1", "--heads", "2", "--ffn", "64", "--max-tokens", "512",
        "--warmup", "10", "--lr", "3e-3", "--bleu-sents", "10"]  # fmt: skip


def lanmt(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def log_events(stage_dir: Path, event: str) -> list[dict]:
    """The records of one kind in a stage's log (which another process may be writing)."""
    path = stage_dir / "train.jsonl"
    records = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except ValueError:  # a line being written
            continue
    return [r for r in records if r["event"] == event]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return prepare_tiny_data(tmp_path_factory.mktemp("faults") / "data")


def write_pairs(folder: Path, n: int, seed: int) -> tuple[Path, Path]:
    pairs = make_task(n, seed)
    src, tgt = folder / f"pairs{seed}.en", folder / f"pairs{seed}.de"
    src.write_text("".join(s + "\n" for s, _ in pairs))
    tgt.write_text("".join(t + "\n" for _, t in pairs))
    return src, tgt


# --- options are checked before anything starts -------------------------------------------

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without GPUs")


@pytest.mark.parametrize("stage", ["teacher", "all"])
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hidden", "65", "--heads", "2"], "must be a multiple of the number of attention heads"),
        (["--dropout", "1.5"], "field model.dropout must be in [0, 1), got 1.5"),
        pytest.param(["--gpus", "1"], "--gpus 1: this machine has no GPUs", marks=NO_GPU),
        (["--gpus", "8"], "--gpus 8: this machine has"),
        (["--gpus", "2", "--workers", "2"], "give one"),
        (["--lr", "nan"], "lr must be a finite number, got nan"),
        (["--lr", "inf"], "lr must be a finite number, got inf"),
        (["--adam-eps", "nan"], "adam-eps must be a finite number, got nan"),
        (["--adam-eps", "-1"], "adam-eps must be positive, got -1.0"),
        (["--weight-decay", "nan"], "weight-decay must be a finite number, got nan"),
        (["--clip-norm", "nan"], "clip-norm must be a finite number, got nan"),
        (["--epochs", "nan"], "epochs must be a finite number, got nan"),
        (["--epochs", "inf"], "epochs must be a finite number, got inf"),
        (["--adam-betas", "0.9,nan"], "adam-betas must be two numbers in [0, 1), got 0.9, nan"),
        (["--adam-betas", "1.5,0.9"], "adam-betas must be two numbers in [0, 1), got 1.5, 0.9"),
        (["--seed", "-1"], "seed must be in [0, 2**63 - 1], got -1"),
        (["--seed", str(2**64)], f"seed must be in [0, 2**63 - 1], got {2**64}"),
        (["--length-penalty", "nan"], "length-penalty must be a finite number, got nan"),
    ],
)
def test_option_errors_come_first_and_leave_nothing(data_dir, tmp_path, stage, args, message):
    run = tmp_path / "run"
    result = lanmt("train", "--data", data_dir, "--out", run, "--stage", stage, *args)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert result.stderr.count("\n") == 1
    assert not run.exists()  # no train_config.json, no lock, no folder


@pytest.mark.parametrize(
    ("select", "message"),
    [
        ("beam", "--select beam: validation decodes with the LaNMT model alone"),
        ("teacher-rescore", "--select teacher-rescore: validation decodes with the LaNMT"),
        ("refine:steps=x", "--select refine:steps=x: option steps of decoder refine takes int"),
        ("refin1", "--select refin1: unknown decoder 'refin1' (did you mean refine?)"),
    ],
)
def test_select_names_a_decoder_of_the_lanmt_model_alone(data_dir, tmp_path, select, message):
    run = tmp_path / "run"
    result = lanmt("train", "--data", data_dir, "--out", run, "--select", select)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {message}"), result.stderr
    assert result.stderr.count("\n") == 1
    assert not run.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gpus", "-1"], "Invalid value for '--gpus'"),
        (["--workers", "-1"], "Invalid value for '--workers'"),
        (["--stage", "nope"], "'nope' is not one of 'all', 'teacher', 'distill', 'lanmt'"),
    ],
)
def test_out_of_range_options_are_usage_errors(data_dir, tmp_path, args, message):
    run = tmp_path / "run"
    result = lanmt("train", "--data", data_dir, "--out", run, *args)
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.output
    assert not run.exists()


def test_a_saved_training_config_with_wrong_types_names_the_field(data_dir, tmp_path):
    stage_dir = tmp_path / "run" / "teacher"
    stage_dir.mkdir(parents=True)
    (stage_dir / "train_config.json").write_text(json.dumps({"lr": "fast", "stage": "teacher"}))
    result = lanmt("train", "--data", data_dir, "--out", tmp_path / "run", "--stage", "teacher",
                   "--resume")  # fmt: skip
    assert result.exit_code == 1
    path = (stage_dir / "train_config.json").resolve()
    assert result.stderr == f"error: {path}: field lr must be a number, got 'fast'\n"


def test_a_saved_training_config_with_one_adam_beta_is_one_line(data_dir, tmp_path):
    stage_dir = tmp_path / "run" / "teacher"
    stage_dir.mkdir(parents=True)
    (stage_dir / "train_config.json").write_text(json.dumps({"betas": [0.9], "stage": "teacher"}))
    result = lanmt("train", "--data", data_dir, "--out", tmp_path / "run", "--stage", "teacher",
                   "--resume")  # fmt: skip
    assert result.exit_code == 1
    assert result.stderr == "error: adam-betas must be two numbers in [0, 1), got 0.9\n"


# --- one writer per stage and per prepared folder -----------------------------------------


@POSIX
def test_a_second_run_of_a_stage_is_refused_naming_the_first(data_dir, tmp_path):
    """Two `lanmt train` into one --out: the second says who holds the stage; SIGTERM then
    ends the first with 143, its lock released."""
    run = tmp_path / "run"
    first = cli("train", "--stage", "teacher", "--data", data_dir, "--out", run, *TINY,
                 "--max-steps", "100000", "--valid-every", "100000",
                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        wait_for(lambda: log_events(run / "teacher", "start"), what="the first run to start")
        second = lanmt("train", "--stage", "teacher", "--data", data_dir, "--out", run, *TINY)
        assert second.exit_code == 1
        assert second.stderr.startswith(
            f"error: {run.resolve() / 'teacher'} is being trained by another lanmt process "
            f"(pid {first.pid} on {socket.gethostname()}, since "
        )
        assert "running: lanmt train --stage teacher" in second.stderr
        assert len(log_events(run / "teacher", "start")) == 1  # the second never started
        first.send_signal(signal.SIGTERM)
        assert first.wait(120) == 143
        assert first.stderr.read().endswith(b"terminated\n")
    finally:
        first.kill()
        first.wait()
    assert not (run / ".teacher.lock").exists()
    assert not list((run / "teacher").glob(".*"))  # no temporary checkpoint folder


def prepare_from_fifos(tmp_path, **popen) -> tuple[subprocess.Popen, list]:
    """`lanmt prepare --out tmp_path/data` started on two new FIFOs, src.fifo and tgt.fifo
    (it waits for them, holding its lock); the process and its arguments after the inputs."""
    for name in ("src.fifo", "tgt.fifo"):
        os.mkfifo(tmp_path / name)
    args = ["--out", tmp_path / "data", "--vocab-size", "55"]
    fifos = ["--train-src", tmp_path / "src.fifo", "--train-tgt", tmp_path / "tgt.fifo"]
    return cli("prepare", *fifos, *args, **popen), args


@POSIX
def test_prepare_reads_pipes_once_and_locks_its_output(tmp_path):
    """`lanmt prepare` from two FIFOs: it holds the lock of --out while it waits for them
    (a second prepare is refused, naming it); each pipe is read once, so every pair counts;
    then an existing --out is refused without --force."""
    src, tgt = write_pairs(tmp_path, 2000, seed=3)
    first, args = prepare_from_fifos(tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    src_fifo, tgt_fifo, out = tmp_path / "src.fifo", tmp_path / "tgt.fifo", tmp_path / "data"
    lock = tmp_path / ".data.lock"
    try:
        wait_for(lambda: lock.exists() and lock.read_text(), what="the first prepare's lock")
        second = lanmt("prepare", "--train-src", src, "--train-tgt", tgt, *args)
        assert second.exit_code == 1
        assert second.stderr.startswith(
            f"error: {out} is being prepared by another lanmt process (pid {first.pid} on "
        )
        for fifo, text in ((src_fifo, src), (tgt_fifo, tgt)):
            with open(fifo, "wb") as f:  # each pipe gives its lines once
                f.write(text.read_bytes())
        stdout, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == 0, stderr
    assert f"wrote {out}" in stdout.decode()
    assert read_meta(out)["splits"]["train"]["pairs"] == 2000
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["data", src.name, tgt.name, src_fifo.name, tgt_fifo.name]
    )  # no lock file, no temporary folder, no spooled copy
    again = lanmt("prepare", "--train-src", src, "--train-tgt", tgt, *args)
    assert again.exit_code == 1
    assert again.stderr == f"error: {out} already exists; use --force to replace it\n"


@POSIX
def test_a_lock_left_by_a_killed_holder_is_taken_over(tmp_path):
    """A `lanmt prepare` waiting on FIFOs holds the lock of --out; killed (SIGKILL: no
    clean-up), it leaves its lock file behind, naming a process that is gone. The next
    prepare takes the lock over, finishes and removes it."""
    src, tgt = write_pairs(tmp_path, 500, seed=7)
    first, args = prepare_from_fifos(tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    out = tmp_path / "data"
    lock = tmp_path / ".data.lock"
    try:
        wait_for(lambda: lock.exists() and lock.read_text(), what="the first prepare's lock")
    finally:
        first.kill()
        first.wait()
    assert json.loads(lock.read_text())["pid"] == first.pid  # left behind by a dead process
    again = lanmt("prepare", "--train-src", src, "--train-tgt", tgt, *args)
    assert again.exit_code == 0, again.stderr
    assert read_meta(out)["splits"]["train"]["pairs"] == 500
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["data", src.name, tgt.name, "src.fifo", "tgt.fifo"]
    )  # the lock file is gone, and no temporary folder is left


@POSIX
@pytest.mark.skipif(not shutil.which("bash") or not shutil.which("zcat"), reason="bash, zcat")
def test_prepare_from_process_substitution(tmp_path):
    """The exact command of the report: `--train-src <(zcat a.gz) --train-tgt <(zcat b.gz)`."""
    src, tgt = write_pairs(tmp_path, 2000, seed=4)
    subprocess.run(["gzip", src, tgt], check=True)
    out = tmp_path / "data"
    command = (
        f"{sys.executable} -m lanmt_cli.app prepare --train-src <(zcat {src}.gz) "
        f"--train-tgt <(zcat {tgt}.gz) --out {out} --vocab-size 55"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(["bash", "-c", command], env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr
    split = read_meta(out)["splits"]["train"]
    assert split["pairs"] == 2000 and split["kept"] > 1900


# --- outputs that cannot be written ------------------------------------------------------


@POSIX
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and /sys")
@pytest.mark.parametrize(
    ("out", "cause"),
    [
        ("/proc/lanmt-data", "/proc does not take new files"),
        ("/sys/lanmt-data", "permission denied"),
    ],
)
def test_prepare_into_a_folder_it_cannot_write_is_one_line(tmp_path, out, cause):
    if out.startswith("/sys") and os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        out = str(locked / "data")
    src, tgt = write_pairs(tmp_path, 50, seed=5)
    result = lanmt("prepare", "--train-src", src, "--train-tgt", tgt, "--out", out)
    assert result.exit_code == 1
    assert result.stderr == f"error: cannot write {out}: {cause}\n"


@POSIX
def test_prepare_that_runs_out_of_room_leaves_nothing(tmp_path):
    """A file-size limit (it stops root too) makes a file of the new folder fail to write."""
    import resource

    src, tgt = write_pairs(tmp_path, 2000, seed=6)
    out = tmp_path / "out" / "data"

    def small_files() -> None:  # Python ignores SIGXFSZ: a write past the limit gets EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, resource.RLIM_INFINITY))

    args = ["prepare", "--train-src", src, "--train-tgt", tgt, "--out", out, "--vocab-size", "55"]
    p = cli(*args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=small_files)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 1
    assert err.decode() == f"error: cannot write {out}: file too large\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, tgt.name])


def test_prepare_and_train_on_a_full_disk_are_one_line(data_dir, tmp_path, full_disk):
    """The lock of the output takes no room; what cannot be written then says so."""
    src, tgt = write_pairs(tmp_path, 50, seed=7)
    out = full_disk / "data"
    prepared = lanmt("prepare", "--train-src", src, "--train-tgt", tgt, "--out", out,
                     "--vocab-size", "55")  # fmt: skip
    assert prepared.exit_code == 1 and "Traceback" not in prepared.output
    assert prepared.stderr == f"error: cannot write {out}: disk full\n"
    run = full_disk / "run"
    trained = lanmt("train", "--stage", "teacher", "--data", data_dir, "--out", run, *TINY,
                    "--max-steps", "2")  # fmt: skip
    assert trained.exit_code == 1 and "Traceback" not in trained.output
    config = run / "teacher" / "train_config.json"
    assert trained.stderr == f"error: cannot write {config}: disk full\n"
    assert not list(full_disk.rglob(".*"))  # no lock file left, no temporary file


# --- a checkpoint that cannot be written --------------------------------------------------


@POSIX
def test_a_checkpoint_that_cannot_be_written_leaves_the_last_one_intact(data_dir, tmp_path):
    """A file-size limit (which stops root too) makes the next checkpoint fail: one line,
    exit 1, no temporary folder, and `last/` still the checkpoint before."""
    import resource

    run = tmp_path / "run"
    common = ["train", "--stage", "teacher", "--data", data_dir, "--out", run, *TINY,
              "--valid-every", "4"]  # fmt: skip
    assert lanmt(*common, "--max-steps", "4").exit_code == 0
    last = run / "teacher" / "last"
    before = {p.name: p.read_bytes() for p in last.iterdir() if p.is_file()}
    limit = len(before["model.safetensors"]) // 2
    assert (run / "teacher" / "train.jsonl").stat().st_size < limit // 2

    def small_files() -> None:  # Python ignores SIGXFSZ: a write past the limit gets EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    p = cli(*common, "--max-steps", "8", "--resume", stdout=subprocess.PIPE,
             stderr=subprocess.PIPE, preexec_fn=small_files)  # fmt: skip
    _, err = p.communicate(timeout=300)
    assert p.returncode == 1
    assert err.decode().endswith(f"error: cannot write {last.resolve()}: file too large\n")
    assert b"Traceback" not in err
    assert {p.name: p.read_bytes() for p in last.iterdir() if p.is_file()} == before
    assert read_position(last).step == 4
    assert not list((run / "teacher").glob(".*"))  # no .last.tmp-* folder


# --- Ctrl-C on Ray workers ----------------------------------------------------------------


@POSIX
@pytest.mark.ray
@pytest.mark.slow
def test_ctrl_c_during_ray_workers_says_interrupted_and_exits_130(data_dir, tmp_path):
    """As in-process training does; and no warning about Ray's token authentication."""
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    p = cli("train", "--stage", "teacher", "--data", data_dir, "--out", run, *TINY,
             "--workers", "2", "--max-steps", "100000", "--valid-every", "100000",
             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)  # fmt: skip
    try:
        wait_for(lambda: log_events(run / "teacher", "train"), 300, "training on 2 Ray workers")
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=300)  # Ray's shutdown can be slow on a busy machine
    finally:
        p.kill()
        p.wait()
    text = err.decode()
    assert p.returncode == 130, text
    assert text.endswith("interrupted\n") and "Traceback" not in text
    assert "Token authentication" not in text and "RAY_AUTH_MODE" not in text
    assert not (run / ".teacher.lock").exists()


@POSIX
@pytest.mark.ray
@pytest.mark.slow
def test_a_worker_stopped_by_rays_oom_killer_is_one_clear_line(data_dir, tmp_path):
    """Ray's memory monitor set to kill above 1% of the node's memory: a worker is killed
    at once, and the user reads what happened and what to do, not Ray's paragraph."""
    env = {
        **os.environ,
        "RAY_memory_usage_threshold": "0.01",
        "RAY_memory_monitor_refresh_ms": "100",
    }
    p = cli("train", "--stage", "teacher", "--data", data_dir, "--out", tmp_path / "run", *TINY,
             "--workers", "2", "--max-failures", "0", "--max-steps", "1000",
             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)  # fmt: skip
    _, err = p.communicate(timeout=300)
    assert p.returncode == 1 and b"Traceback" not in err
    assert re.fullmatch(
        r"error: training failed on the Ray workers: a worker ran out of memory: Ray's OOM "
        r"killer stopped it \([\d.]+ ?GB of [\d.]+ ?GB in use on the node\); lower --max-tokens "
        r"or the number of workers, or free memory",
        err.decode().splitlines()[-1],
    ), err.decode()
