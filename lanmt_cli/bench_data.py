"""Test sets for `lanmt bench`: sources and references from files or from sacreBLEU."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lanmt_cli.errors import LanmtError


@dataclass
class TestSet:
    """Sources and their references (one list per reference stream, each aligned)."""

    __test__ = False  # not a pytest test class

    sources: list[str]
    references: list[list[str]]  # empty: no references, speed only
    origin: dict[str, Any]  # where it came from, for the report
    total: int = 0  # sentences in the full test set (before `head`)

    def __post_init__(self) -> None:
        self.total = self.total or len(self.sources)

    def head(self, n: int | None) -> TestSet:
        """The first n sentences (all for None)."""
        if n is None or n >= len(self.sources):
            return self
        return TestSet(self.sources[:n], [r[:n] for r in self.references], self.origin, self.total)


def _read(path: Path) -> list[str]:
    from lanmt_cli.textio import iter_lines, strip_bom

    lines = list(iter_lines(path))
    if lines:
        lines[0] = strip_bom(lines[0])
    return lines


def read_test_set(src: str | Path, refs: Sequence[str | Path] = (), **origin: Any) -> TestSet:
    """A test set from a source file and reference files (plain or gzip, line-aligned)."""
    from lanmt_cli.textio import check_parallel, count_lines

    src = Path(src)
    if refs:
        for ref in refs:
            check_parallel(src, Path(ref))
    else:
        count_lines(src)  # empty, missing, not UTF-8: one clear error
    origin = {"name": None, "langpair": None, **origin}
    origin.update(src=str(src), refs=[str(r) for r in refs])
    return TestSet(_read(src), [_read(Path(r)) for r in refs], origin)


def sacrebleu_test_set(name: str, langpair: str) -> TestSet:
    """A sacreBLEU test set (`wmt14`, `en-de`): from its local cache, else downloaded."""
    from sacrebleu.dataset import DATASETS
    from sacrebleu.utils import get_langpairs_for_testset

    if name not in DATASETS:
        close = difflib.get_close_matches(name, list(DATASETS), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise LanmtError(
            f"unknown sacreBLEU test set {name!r}{hint}; `sacrebleu --list` shows them"
        )
    pairs = get_langpairs_for_testset(name)
    if langpair not in pairs:
        raise LanmtError(
            f"sacreBLEU test set {name} has no language pair {langpair!r}; it has "
            f"{', '.join(sorted(pairs))}"
        )
    dataset = DATASETS[name]
    try:
        src = dataset.get_source_file(langpair)
        refs = dataset.get_reference_files(langpair)
    except (Exception, SystemExit) as err:  # sacrebleu exits on some download failures
        reason = getattr(err, "reason", err)
        raise LanmtError(
            f"cannot download sacreBLEU test set {name} {langpair} (no network?): use "
            f"--src/--ref ({type(err).__name__}: {reason})"
        ) from None
    return read_test_set(src, refs, name=name, langpair=langpair)
