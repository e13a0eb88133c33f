"""`lanmt translate` driven for real: the CLI runner, and subprocesses for pipes and signals."""

from __future__ import annotations

import functools
import gzip
import json
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lanmt_cli.app import app
from lanmt_cli.quantize import native_bf16
from tests.processes import cli

ROOT = Path(__file__).resolve().parent.parent
# every decoder, with options that keep the sampling ones quick on the tiny model
DECODERS = {
    "one-shot": [],
    "refine1": [],
    "refine3": [],
    "refine": ["--opt", "steps=2"],
    "latent-search": ["--opt", "samples=10"],
    "teacher-rescore": ["--opt", "samples=10"],
    "beam": [],
    "beam1": [],
}


def lanmt(*args: str, input: bytes | str | None = None):
    result = CliRunner().invoke(app, list(args), input=input)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


@functools.cache
def _translate(bundle: str, text: str, *args: str) -> list[str]:
    result = lanmt("translate", "-m", bundle, *args, input=text)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    return result.stdout.split("\n")[:-1]


def accuracy(outputs: list[str], task) -> float:
    return sum(o == ref for o, (_, ref) in zip(outputs, task, strict=True)) / len(task)


def task_input(task) -> str:
    return "".join(f"{s}\n" for s, _ in task)


@pytest.mark.parametrize("decoder", DECODERS)
def test_every_decoder_translates(tiny_bundle, tiny_task, decoder):
    out = _translate(str(tiny_bundle), task_input(tiny_task), "-d", decoder, *DECODERS[decoder])
    assert len(out) == len(tiny_task)
    assert accuracy(out, tiny_task) >= 0.6


def test_refinement_at_least_as_accurate_as_one_shot(tiny_bundle, tiny_task):
    text = task_input(tiny_task)
    one_shot = accuracy(_translate(str(tiny_bundle), text, "-d", "one-shot"), tiny_task)
    refine = accuracy(_translate(str(tiny_bundle), text, "-d", "refine1"), tiny_task)
    assert refine >= one_shot


# Few loud samples, not refined: the tiny model's output then depends on the random draw.
NOISY = ["--opt", "samples=4", "--opt", "noise=4", "--opt", "steps=0"]


@pytest.mark.parametrize("decoder", DECODERS)
def test_same_output_whatever_the_batch_size(tiny_bundle, tiny_task, decoder):
    """One sentence per batch, windows of 3 lines, or everything at once: the same lines."""
    text = task_input(tiny_task[:30])
    args = ("-d", decoder, *DECODERS[decoder], "--seed", "7")
    big = _translate(str(tiny_bundle), text, *args, "--batch-tokens", "100000")
    small = _translate(str(tiny_bundle), text, *args, "--batch-tokens", "1", "--window", "3")
    assert small == big


@pytest.mark.parametrize("decoder", ["latent-search", "teacher-rescore"])
def test_sampling_decoders_depend_on_the_seed_only(tiny_bundle, tiny_task, decoder):
    text = task_input(tiny_task[:30])
    # jsonl with every distinct candidate: the draw shows in them even where the prior mean,
    # always the first sample, wins
    args = ("-d", decoder, *NOISY, "--opt", "nbest=100", "--output-format", "jsonl")

    def run(text, *more):
        lines = _translate(str(tiny_bundle), text, *args, *more)
        rows = map(json.loads, lines)
        return [(r["translation"], [c["translation"] for c in r["candidates"]]) for r in rows]

    big = run(text, "--seed", "7", "--batch-tokens", "100000")
    small = run(text, "--seed", "7", "--batch-tokens", "1")
    reordered = run(task_input(tiny_task[:30][::-1]), "--seed", "7")
    assert small == big == reordered[::-1]
    other = run(text, "--seed", "8", "--batch-tokens", "100000")
    assert other != big  # the draw matters here, so the agreement above means something


def test_jsonl_carries_source_scores_length_and_candidates(tiny_bundle, tiny_task):
    src = [s for s, _ in tiny_task[:5]]
    text = "\n".join([src[0], "", *src[1:]]) + "\n"
    lines = _translate(
        str(tiny_bundle), text, "-d", "teacher-rescore", "--opt", "samples=10",
        "--output-format", "jsonl",
    )  # fmt: skip
    records = [json.loads(line) for line in lines]
    assert [r["source"] for r in records] == [src[0], "", *src[1:]]
    empty = records[1]
    assert (empty["translation"], empty["score"], empty["length"], empty["pieces"]) == (
        "",
        None,
        0,
        0,
    )
    for r in records[:1] + records[2:]:
        assert r["decoder"] == "teacher-rescore"
        assert r["options"]["samples"] == 10
        assert r["length"] > 0 and r["pieces"] == 1
        scores = [c["score"] for c in r["candidates"]]
        assert scores == sorted(scores, reverse=True)
        assert r["candidates"][0] == {"translation": r["translation"], "score": r["score"]}


def test_files_in_file_out(tiny_bundle, tiny_task, tmp_path):
    first, second = task_input(tiny_task[:3]), task_input(tiny_task[3:5])
    expected = _translate(str(tiny_bundle), first + second + "red dog\n", "-d", "beam")
    (tmp_path / "a.txt").write_text(first)
    with gzip.open(tmp_path / "b.txt.gz", "wt") as f:
        f.write(second.rstrip("\n"))  # no final newline: still a line
    out = tmp_path / "out.txt"
    args = ["translate", "-m", str(tiny_bundle), "-d", "beam", "-o", str(out)]
    result = lanmt(*args, str(tmp_path / "a.txt"), str(tmp_path / "b.txt.gz"))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert out.read_text().split("\n")[:-1] == expected[:5]
    # `-` reads stdin at its place among the files
    result = lanmt(*args, str(tmp_path / "b.txt.gz"), "-", input="red dog\n")
    assert out.read_text().split("\n")[:-1] == expected[3:]


def test_long_lines_split_or_truncated_and_bad_bytes_replaced(tiny_bundle, tiny_task):
    long = " ".join(s for s, _ in tiny_task[:6])
    data = f"red dog\n{long}\n".encode() + b"big \xff\xfe cat\r\n\n   \n"
    args = ["translate", "-m", str(tiny_bundle), "-d", "refine1", "--max-input-tokens", "8"]
    result = lanmt(*args, input=data)
    assert result.exit_code == 0, result.output
    out = result.stdout.split("\n")[:-1]
    assert len(out) == 5 and out[0] == "hund rot" and out[3:] == ["", ""]
    assert len(out[1].split()) > 8  # every piece of the long line was translated
    assert "<stdin> line 2: longer than 8 tokens; translated in" in result.stderr
    assert "<stdin> line 3: bytes that are not UTF-8 were replaced" in result.stderr
    assert "Traceback" not in result.output
    result = lanmt(*args, "--truncate", input=f"{long}\n")
    assert result.exit_code == 0 and len(result.stdout.split("\n")[:-1]) == 1
    assert "line 1: longer than 8 tokens; truncated" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-d", "refin"], "error: unknown decoder 'refin' (did you mean refine?)"),
        (["-d", "refine", "--opt", "stpes=2"], "no option 'stpes' (did you mean steps?)"),
        (["-d", "refine", "--opt", "steps"], "is not of the form key=value"),
        (["-d", "refine:steps=2", "--opt", "steps=3"], "decoder option steps is given twice"),
        (["-d", "refine:steps=two"], "option steps of decoder refine takes int, got 'two'"),
        (["-d", "refine:"], "no options after ':'"),
        (["-d", "refin:steps=2"], "error: unknown decoder 'refin' (did you mean refine?)"),
        (["missing.txt"], "missing.txt: no such file"),
        (["-m", "/nonexistent/model"], "no such model folder"),
    ],
)
def test_user_errors_are_one_line(tiny_bundle, args, message):
    if "-m" not in args:
        args = ["-m", str(tiny_bundle), *args]
    result = lanmt("translate", *args, input="red dog\n")
    assert result.exit_code == 1
    assert message in result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""


def test_decoder_options_in_the_spec_as_lanmt_bench_takes_them(tiny_bundle, tiny_task):
    """`-d NAME:key=value,...` (bench's syntax) is `-d NAME --opt key=value ...`, or a mix."""
    text = task_input(tiny_task[:10])
    jsonl = ("--output-format", "jsonl")
    spec = _translate(str(tiny_bundle), text, "-d", "latent-search:samples=4,noise=4", *jsonl)
    opt = _translate(
        str(tiny_bundle), text, "-d", "latent-search", "--opt", "samples=4", "--opt", "noise=4",
        *jsonl,
    )  # fmt: skip
    mixed = _translate(
        str(tiny_bundle), text, "-d", "latent-search:samples=4", "--opt", "noise=4", *jsonl
    )
    assert spec == opt == mixed
    options = json.loads(spec[0])["options"]
    assert (options["samples"], options["noise"]) == (4, 4.0)  # not the defaults
    default = json.loads(_translate(str(tiny_bundle), text, "-d", "latent-search", *jsonl)[0])
    assert (default["options"]["samples"], default["options"]["noise"]) != (4, 4.0)
    assert _translate(str(tiny_bundle), text, "-d", "one-shot:compute_type=int8") == _translate(
        str(tiny_bundle), text, "-d", "one-shot", "--opt", "compute_type=int8"
    )


def test_help_says_what_the_embedded_model_knows():
    text = " ".join(lanmt("translate", "--help").stdout.split())
    assert "The embedded default model (English to German) was trained on image captions" in text
    assert "Other text (news, technical or long sentences) gets poorer translations" in text
    assert "give --model a model trained on your kind of text" in text


def test_output_file_is_not_left_half_written(tiny_bundle, tmp_path):
    """An error after some lines were translated leaves no output file, nor a temporary one."""
    broken = tmp_path / "broken.gz"
    broken.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    out = tmp_path / "out.txt"
    args = ["translate", "-m", str(tiny_bundle), "-o", str(out), "-", str(broken)]
    result = lanmt(*args, input="red dog\n" * 3)
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {broken}: cannot read")
    assert list(tmp_path.iterdir()) == [broken]


def test_decoders_command_lists_packages_and_options():
    rows = json.loads(lanmt("decoders", "--json").stdout)
    by_name = {r["name"]: r for r in rows}
    assert {"one-shot", "refine", "latent-search", "teacher-rescore", "beam"} <= set(by_name)
    assert by_name["refine"]["package"] == "lanmt"
    assert by_name["refine"]["numbered_option"] == "steps"
    search = {o["name"]: o for o in by_name["latent-search"]["options"]}
    assert (search["samples"]["default"], search["noise"]["default"]) == (50, 0.5)
    assert by_name["teacher-rescore"]["needs_teacher"] is True
    text = lanmt("decoders").stdout
    assert "refineN (or refine-N) sets steps=N" in text
    assert "--opt samples=INT" in text and "package lanmt" in text


# --- real processes: pipes, streaming, signals, start-up ----------------------------------


_cli = cli  # lanmt as a real process (tests/processes.py)


def _readline(stream, timeout: float) -> bytes:
    ready, _, _ = select.select([stream], [], [], timeout)
    assert ready, "no output in time"
    return stream.readline()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes and signals")
def test_streams_each_line_and_ctrl_c_exits_130(tiny_bundle):
    """A line is answered while stdin stays open; Ctrl-C then ends with 130, no traceback."""
    p = _cli("translate", "-m", str(tiny_bundle), "-d", "refine1", stdin=subprocess.PIPE,
             stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        p.stdin.write(b"red dog\n")
        p.stdin.flush()
        assert _readline(p.stdout, 120) == b"hund rot\n"
        p.stdin.write(b"big cat\n")
        p.stdin.flush()
        assert _readline(p.stdout, 60) == b"katze gro\xc3\x9f\n"
        p.send_signal(signal.SIGINT)
        assert p.wait(60) == 130
        assert b"Traceback" not in p.stderr.read()
    finally:
        p.kill()
        p.wait()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX pipes")
def test_closed_output_pipe_ends_quietly(tiny_bundle):
    """`lanmt translate | head -1`: the reader goes away, lanmt ends with status 0 quietly."""
    p = _cli("translate", "-m", str(tiny_bundle), "-d", "one-shot", stdin=subprocess.PIPE,
             stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        p.stdin.write(b"red dog\n")
        p.stdin.flush()
        assert _readline(p.stdout, 120) == b"hund rot\n"
        p.stdout.close()  # head -1 has its line and exits
        try:
            for _ in range(200):
                p.stdin.write(b"big cat\n" * 50)
                p.stdin.flush()
            p.stdin.close()
        except BrokenPipeError:
            pass  # lanmt already left
        assert p.wait(60) == 0
        assert p.stderr.read() == b""
    finally:
        p.kill()
        p.wait()


def test_stdin_pipe_accounts_for_every_line(tiny_bundle):
    """The reader thread's own line splitting: bad bytes, CRLF, blank and unterminated lines."""
    data = b"red dog\r\n\n\xff\xfe\n   \nbig cat"
    p = _cli("translate", "-m", str(tiny_bundle), "-d", "one-shot", stdin=subprocess.PIPE,
             stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    out, err = p.communicate(data, timeout=120)
    assert p.returncode == 0
    lines = out.decode().split("\n")
    assert lines[-1] == "" and len(lines[:-1]) == 5
    assert lines[0] == "hund rot" and lines[1] == "" and lines[3] == "" and lines[4] != ""
    assert b"line 3: bytes that are not UTF-8" in err and b"Traceback" not in err


def test_translate_module_imports_no_torch():
    code = "import sys, lanmt_cli.commands.translate, lanmt_cli.commands.decoders; " \
        "print('torch' in sys.modules)"  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.skipif(native_bf16(), reason="this CPU multiplies bfloat16: bfloat16 runs here")
def test_bf16_where_the_cpu_cannot_is_one_line_in_a_real_process(tiny_bundle):
    args = ("translate", "-m", tiny_bundle, "-d", "one-shot", "--opt", "compute_type=bfloat16")
    proc = cli(*args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(b"a b c\n", timeout=120)
    assert proc.returncode == 1 and out == b""
    assert err.decode().strip().splitlines() == [
        "error: compute_type=bfloat16 needs a CPU that multiplies bfloat16 in hardware "
        "(AVX512-BF16 or AMX), and this one does not: use compute_type=auto, float32 or int8"
    ]
