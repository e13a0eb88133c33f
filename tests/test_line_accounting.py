"""Every input line gets exactly one output line, in order, whatever the input holds."""

from __future__ import annotations

import functools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from lanmt_cli.app import app
from tests.tiny import DICTIONARY

WORDS = sorted(DICTIONARY)

normal = st.lists(st.sampled_from(WORDS), min_size=1, max_size=6).map(" ".join)
blank = st.sampled_from(["", " ", "\t", "  \t ", "\r"])
long_text = st.lists(st.sampled_from(WORDS), min_size=20, max_size=120).map(" ".join)
long_word = st.integers(40, 400).map(lambda n: "x" * n)  # no space to split at
any_text = st.text(st.characters(exclude_characters="\n", exclude_categories=("Cs",)), max_size=40)
invalid = st.binary(min_size=1, max_size=12).filter(lambda b: b"\n" not in b)

line = st.one_of(
    normal.map(str.encode),
    blank.map(str.encode),
    long_text.map(str.encode),
    long_word.map(str.encode),
    any_text.map(lambda t: t.encode("utf-8")),
    invalid,
    st.tuples(normal, invalid).map(lambda p: p[0].encode() + b" " + p[1]),
)


def _run(bundle, data: bytes, *args: str):
    result = CliRunner().invoke(
        app,
        ["translate", "-m", str(bundle), "-d", "one-shot", "--max-input-tokens", "12", *args],
        input=data,
    )
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result


@functools.cache
def _alone(bundle: str, text: str) -> str:
    """The translation of one line on its own."""
    return _run(bundle, text.encode() + b"\n").stdout


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(lines=st.lists(line, min_size=1, max_size=25), final_newline=st.booleans())
def test_one_output_line_per_input_line(tiny_bundle, lines, final_newline):
    data = b"\n".join(lines) + (b"\n" if final_newline else b"")
    expected = data.count(b"\n") + (bool(data) and not data.endswith(b"\n"))
    result = _run(tiny_bundle, data, "--batch-tokens", "64", "--window", "7")
    out = result.stdout.split("\n")
    assert out[-1] == ""  # every line, the last one too, ends with a newline
    out = out[:-1]
    assert len(out) == expected
    # in order: blank lines stay blank, normal lines translate as they do alone
    for raw, got in zip(data.split(b"\n"), out, strict=False):
        if not raw.strip():
            assert got == ""
        elif all(w in WORDS for w in raw.decode("utf-8", "replace").split()):
            assert got + "\n" == _alone(str(tiny_bundle), raw.decode())


def test_overlong_lines_are_split_or_truncated_never_dropped(tiny_bundle):
    words = " ".join(WORDS * 10)  # 120 words
    data = f"{words}\n{'y' * 1000}\nred dog\n".encode()
    split = _run(tiny_bundle, data).stdout.split("\n")[:-1]
    cut = _run(tiny_bundle, data, "--truncate").stdout.split("\n")[:-1]
    assert len(split) == len(cut) == 3
    assert split[2] == cut[2] == "hund rot"
    assert len(split[0].split()) > 3 * len(cut[0].split())  # all pieces vs the first only
