"""What a new user hit (issue 14): help and version, bad config.json files, decoder options
that are not finite, strict JSON lines, mirrors that cannot be read, the embedded model; and
(issue 20) a standard output that cannot be written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from lanmt_cli import __version__, archive, hub
from lanmt_cli.app import app
from tests.processes import cli

COMMANDS = [
    [], ["translate"], ["bench"], ["prepare"], ["train"], ["decoders"], ["download"], ["pack"],
    ["models"], ["models", "list"], ["models", "remove"],
]  # fmt: skip


def lanmt(*args, input: str | None = None):
    result = CliRunner().invoke(app, [str(a) for a in args], input=input)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def strict_json(line: str):
    """json.loads that refuses NaN and Infinity, which are not JSON."""

    def refuse(constant: str):
        raise AssertionError(f"not JSON: {constant}")

    return json.loads(line, parse_constant=refuse)


def test_tests_run_torch_on_one_thread():
    want = int(os.environ.get("LANMT_TEST_THREADS", "1"))
    assert torch.get_num_threads() == want and os.environ["OMP_NUM_THREADS"] == str(want)


# --- help and version ---------------------------------------------------------------------


def test_version():
    result = lanmt("--version")
    assert result.exit_code == 0 and result.stdout == f"lanmt {__version__}\n"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "lanmt")
def test_help_has_no_type_placeholders(command):
    text = lanmt(*command, "--help").stdout
    usage = text.splitlines()[0]
    assert usage.startswith("Usage: lanmt") and not re.search(r"[{}]", usage), usage
    assert "<list[" not in text and "<str>" not in text, text
    assert not re.search(r"^  [a-z_]+ <", text, re.M), text  # `name <str>`: an argument


def test_stage_lists_its_choices():
    text = lanmt("train", "--help").stdout
    assert "--stage <all|teacher|distill|lanmt|finetune>" in text


# --- config.json of a bundle --------------------------------------------------------------


def _broken(meta: dict, case: str):
    model = meta["model"]
    return {
        "a list": [],
        "hidden not a number": {**meta, "model": {**model, "hidden": "abc"}},
        "model a list": {**meta, "model": []},
        "heads do not divide": {**meta, "model": {**model, "heads": 3}},
        "tokenizer outside": {**meta, "tokenizer": {"src": "../spm.model", "tgt": "spm.model"}},
        "tokenizer absolute": {**meta, "tokenizer": {"src": "/etc/hostname", "tgt": "spm.model"}},
        "teacher outside": {**meta, "teacher": "/tmp"},
        "teacher the bundle itself": {**meta, "teacher": "."},
        "max_len huge": {**meta, "model": {**model, "max_len": 1_000_000_000}},
        "layers too many": {**meta, "model": {**model, "decoder_layers": 1_000_000}},
        "dtype unknown": {**meta, "dtype": "float8"},
        "languages a string": {**meta, "languages": "en-de"},
    }[case]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("a list", "must hold a JSON object, not list"),
        ("hidden not a number", "field model.hidden must be an integer, got 'abc'"),
        ("model a list", "field model must be a JSON object, got []"),
        ("heads do not divide", "must be a multiple of the number of attention heads (heads 3)"),
        ("tokenizer outside", "field tokenizer.src must name a file inside the bundle folder"),
        ("tokenizer absolute", "field tokenizer.src must name a file inside the bundle folder"),
        ("teacher outside", "field teacher must name a file inside the bundle folder"),
        ("teacher the bundle itself", "field teacher must name a folder inside the bundle, not"),
        ("max_len huge", "field model.max_len must be at most 4096, got 1000000000"),
        ("layers too many", "field model.decoder_layers must be at most 100, got 1000000"),
        ("dtype unknown", "field dtype must be one of float32, float16, bfloat16, got 'float8'"),
        ("languages a string", "field languages must be a JSON object"),
    ],
)
def test_a_bad_config_json_names_the_field(tiny_bundle_copy, case, message):
    cfg = tiny_bundle_copy / "config.json"
    cfg.write_text(json.dumps(_broken(json.loads(cfg.read_text()), case)))
    result = lanmt("translate", "-m", tiny_bundle_copy, input="red dog\n")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"error: {cfg}: ") and message in result.stderr
    assert result.stderr.count("\n") == 1 and result.stdout == ""


# --- decoder options and JSON lines -------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-d", "beam", "--opt", "max_len_a=inf"], "max_len_a of decoder beam must be a finite"),
        (["-d", "beam", "--opt", "max_len_a=1e300"], "max_len_a of decoder beam must be at most"),
        (["-d", "latent-search", "--opt", "noise=nan"], "noise of decoder latent-search must be a"),
        (["-d", "latent-search", "--opt", "noise=-inf"], "must be a finite number, got -inf"),
    ],
)
def test_float_options_must_be_finite_and_in_range(tiny_bundle, args, message):
    result = lanmt("translate", "-m", tiny_bundle, *args, input="red dog\n")
    assert result.exit_code == 1
    assert message in result.stderr and result.stderr.count("\n") == 1


@pytest.mark.parametrize("command", ["translate", "bench"])
@pytest.mark.parametrize("seed", [-1, 2**64])
def test_a_seed_out_of_range_is_a_usage_error(tiny_bundle, command, seed):
    result = lanmt(command, "-m", tiny_bundle, "-d", "latent-search", "--seed", seed, input="a\n")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "Invalid value for '--seed'" in result.stderr
    bound = "greater than or equal to 0" if seed < 0 else f"less than or equal to {2**63 - 1}"
    assert bound in result.stderr


def test_jsonl_is_strict_json_even_for_scores_that_are_not_finite(tiny_bundle):
    """Scores of -inf (a beam that found nothing) or NaN are written as null, never as the
    bare `-Infinity` or `NaN` that no JSON parser has to accept."""
    from lanmt_cli.commands.translate import Format, _format
    from lanmt_cli.translator import Result

    result = Result("a", "", "beam", float("-inf"), 0, [("", float("nan")), ("b", -1.5)])
    record = strict_json(_format(result, {"beam": 3}, Format.jsonl))
    assert record["score"] is None
    assert record["candidates"] == [
        {"translation": "", "score": None},
        {"translation": "b", "score": -1.5},
    ]
    run = lanmt("translate", "-m", tiny_bundle, "-d", "teacher-rescore", "--opt", "samples=4",
                "--output-format", "jsonl", input="red dog\n\nbig cat\n")  # fmt: skip
    assert run.exit_code == 0, run.output
    assert [strict_json(line)["source"] for line in run.stdout.splitlines()] == [
        "red dog", "", "big cat",
    ]  # fmt: skip


# --- models, mirrors and the embedded default ---------------------------------------------


@pytest.fixture
def installed(tiny_bundle, home, tmp_path) -> str:
    """`my_ende`, installed from an archive that no index lists."""
    entry = archive.pack(tiny_bundle, tmp_path / "site", name="my_ende")
    hub.install_archive(tmp_path / "site" / entry["file"], say=lambda _: None)
    return "my_ende"


def test_a_mirror_that_cannot_be_read_says_so(installed, tmp_path):
    ftp = lanmt("download", installed, "--force", "--mirror", "ftp://example.org/lanmt")
    assert ftp.exit_code == 1
    assert ftp.stderr == (
        "error: cannot read the mirror ftp://example.org/lanmt: ftp:// is not supported "
        "(use an http(s):// or file:// URL, or a folder)\n"
    )
    missing = tmp_path / "no-such-mirror"
    gone = lanmt("download", installed, "--force", "--mirror", missing)
    assert gone.exit_code == 1
    assert gone.stderr == f"error: cannot read the mirror {missing}: no such folder\n"
    file_url = lanmt("download", installed, "--force", "--mirror", f"file://{missing}")
    assert file_url.exit_code == 1 and "no such folder" in file_url.stderr


def test_an_installed_model_no_index_lists_is_not_called_unknown(installed, home, tmp_path):
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    again = lanmt("download", installed, "--force", "--mirror", empty)
    assert again.exit_code == 1
    assert again.stderr.startswith(
        f"error: my_ende is installed at {home / 'models' / 'my_ende'}, but no model index "
        f"lists it (the mirror {empty} has no index.json), so it cannot be downloaded again"
    )
    unknown = lanmt("download", "nope", "--mirror", empty)
    assert unknown.exit_code == 1
    assert unknown.stderr.startswith(
        "error: unknown model 'nope'; embedded: default; installed: my_ende; available for "
        f"download: none (the mirror {empty} has no index.json); planned: wmt14_ende"
    )


def test_the_embedded_model_has_a_description_and_is_not_called_installed(home):
    rows = {r["name"]: r for r in json.loads(lanmt("models", "--json").stdout)}
    assert rows["default"]["status"] == "embedded"
    assert "English-German" in rows["default"]["description"]
    gone = lanmt("models", "remove", "nope")
    assert gone.exit_code == 1 and gone.stderr == "error: nope is not installed (installed: none)\n"
    missing = lanmt("translate", "-m", "nope", input="x\n")
    assert missing.exit_code == 1 and "embedded: default; installed: none;" in missing.stderr


# --- a standard output that cannot be written ---------------------------------------------

POSIX = pytest.mark.skipif(sys.platform == "win32", reason="/dev/full and closing fd 1")


def _close_stdout() -> None:  # `lanmt ... >&-`
    os.close(1)


def run_without_stdout(args, how: str, tmp_path) -> tuple[int, str]:
    """`lanmt ARGS > /dev/full` (a full disk) or `lanmt ARGS >&-`: exit status and stderr."""
    kw = {"stdin": subprocess.DEVNULL, "stderr": subprocess.PIPE, "cwd": tmp_path}
    if how == "full":
        with open("/dev/full", "wb") as full:
            p = cli(*args, stdout=full, **kw)
    else:
        p = cli(*args, preexec_fn=_close_stdout, **kw)
    _, err = p.communicate(timeout=300)
    return p.returncode, err.decode()


@POSIX
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize(
    ("command", "how"),
    [
        *((c, "full") for c in ("--version", "--help", "decoders", "models", "translate", "pack")),
        *((c, "closed") for c in ("--version", "translate")),
    ],
)
def test_a_stdout_that_cannot_be_written_is_one_line(command, how, tiny_bundle_copy, tmp_path):
    """As an output file that cannot be written: one line and exit 1, for every command."""
    args = [command]
    if command == "translate":
        (tmp_path / "in.txt").write_text("red dog\nbig cat\n")
        args += ["-m", tiny_bundle_copy, "-d", "one-shot", "in.txt"]
    elif command == "pack":  # the archive is written; the JSON entry on stdout is not
        args += [tiny_bundle_copy, "-o", "site"]
    rc, err = run_without_stdout(args, how, tmp_path)
    cause = "disk full" if how == "full" else "it is closed"
    assert rc == 1 and "Traceback" not in err
    assert err.splitlines()[-1] == f"error: cannot write to standard output: {cause}"
    assert len(err.splitlines()) == 1 + (command == "pack"), err  # pack: "wrote FILE"
