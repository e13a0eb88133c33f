"""Measure decoders the way a speed claim must be measured: one run, one machine, one model.

    from lanmt_cli.bench import bench
    from lanmt_cli.bench_data import read_test_set
    from lanmt_cli.bench_report import markdown
    from lanmt_cli.bundle import load_bundle
    report = bench(load_bundle("model"), ["beam", "one-shot", "refine1"],
                   read_test_set("test.en", ["test.de"]), evaluate=True)
    print(markdown(report))

`lanmt bench` is one user of this module, which measures; `lanmt_cli.bench_data` reads test
sets and `lanmt_cli.bench_report` presents the figures. Every decoder of a run shares the
loaded model (and teacher), the device, the CPU threads and the sentences, so speed-ups are
ratios of numbers measured side by side:

- **latency**: each sentence decoded alone (batch size 1), after a warm-up, model loading
  excluded. The clock (`time.perf_counter`) is read after `torch.cuda.synchronize()` on a GPU,
  around the decoder call on the sentence's token ids (tokenization is the same for every
  decoder and is left out). The decoders take turns sentence by sentence, in a rotating
  order, so a machine that slows down or speeds up during the run favours none of them;
  Python's garbage collector is paused while a call is timed, as `timeit` does.
- **throughput**: the whole test set translated text-in, text-out with `Translator.translate`
  (sorted by length, batched by `batch_tokens`); sentences and target tokens per second.
  These are the translations BLEU is computed on.
- **speed-up** = baseline time / decoder time, for both; for latency also a 95% paired
  bootstrap interval over sentences.
- **quality** (references given): sacreBLEU BLEU (13a, cased) with its signature, the
  paper's variant (`intl` tokenization, lower-cased) and chrF.
"""

from __future__ import annotations

import gc
import hashlib
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

import numpy as np
import torch

from lanmt_cli import registry
from lanmt_cli.bench_data import TestSet
from lanmt_cli.errors import LanmtError
from lanmt_cli.model import count_parameters
from lanmt_cli.translator import Translator

REPORT_VERSION = 1  # of the JSON report
BASELINE = "beam"  # the teacher's beam search, beam 3 (its default), on CTranslate2
TEACHER_DECODERS = ("beam1",)  # greedy search on CTranslate2, measured beside the baseline
DEFAULT_DECODERS = ("one-shot", "refine1", "latent-search", "teacher-rescore")
BOOTSTRAP_SAMPLES = 1000


# --- decoder specs -----------------------------------------------------------------------


def check_specs(baseline: str, specs: Sequence[str]) -> list[str]:
    """The labels of a run: the baseline first, then `specs` (each once), all resolvable."""
    labels = [baseline] + [s for s in specs if s != baseline]
    twice = sorted({s for s in labels[1:] if labels[1:].count(s) > 1})
    if twice:
        raise LanmtError(f"decoder {twice[0]} is listed twice")
    for label in labels:  # an unknown decoder or a bad option: one clear error, now
        registry.resolve(label)
    return labels


def default_decoders(bundle) -> list[str]:
    """The paper's table: the baseline, greedy search beside it (beam1) and the four LaNMT
    decoders; a Transformer model gets the baseline and greedy search only."""
    if bundle.kind == "transformer":
        return [BASELINE, *TEACHER_DECODERS]
    return [BASELINE, *TEACHER_DECODERS, *DEFAULT_DECODERS]


# --- the measurements --------------------------------------------------------------------


@dataclass
class Latency:
    """Per-sentence decoding time at batch size 1, in milliseconds."""

    sentences: int
    mean_ms: float
    std_ms: float  # population standard deviation over sentences (numpy's default)
    median_ms: float
    p90_ms: float  # 90th percentile (linear interpolation)
    min_ms: float
    max_ms: float
    total_s: float
    speedup: float | None = None  # baseline mean / this mean
    speedup_ci95: list[float] | None = None  # paired bootstrap over sentences


def latency_stats(seconds: Sequence[float]) -> Latency:
    ms = np.asarray(seconds, dtype=float) * 1000.0
    return Latency(
        sentences=len(ms),
        mean_ms=float(ms.mean()),
        std_ms=float(ms.std()),
        median_ms=float(np.median(ms)),
        p90_ms=float(np.percentile(ms, 90)),
        min_ms=float(ms.min()),
        max_ms=float(ms.max()),
        total_s=float(ms.sum() / 1000.0),
    )


def speedup_interval(base: Sequence[float], other: Sequence[float], seed: int = 0) -> list[float]:
    """95% paired bootstrap interval of mean(base) / mean(other) over the same sentences."""
    a, b = np.asarray(base, dtype=float), np.asarray(other, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(BOOTSTRAP_SAMPLES, len(a)))  # (S, n)
    ratios = a[idx].mean(1) / b[idx].mean(1)
    low, high = np.percentile(ratios, [2.5, 97.5])
    return [float(low), float(high)]


@dataclass
class Throughput:
    """The whole test set translated in batches of `batch_tokens`."""

    sentences: int
    target_tokens: int  # SentencePiece pieces of the output, by the model's target tokenizer
    seconds: float  # the median run
    runs_s: list[float]  # every run (--repeats), in order
    sentences_per_s: float
    tokens_per_s: float
    peak_memory_mb: float | None  # CUDA only: peak allocated during the runs, weights included
    speedup: float | None = None  # baseline seconds / these seconds

    @classmethod
    def of(cls, sentences: int, tokens: int, runs: list[float], peak: float | None) -> Throughput:
        seconds = float(np.median(runs))
        return cls(sentences, tokens, seconds, runs, sentences / seconds, tokens / seconds, peak)


@dataclass
class Quality:
    """sacreBLEU scores of the translations against the references."""

    bleu: float  # 13a tokenization, cased: the headline
    bleu_signature: str
    bleu_text: str  # sacreBLEU's own line: n-gram precisions, brevity penalty, lengths
    bleu_intl_lc: float  # the paper's variant: intl tokenization, lower-cased
    bleu_intl_lc_signature: str
    chrf: float
    chrf_signature: str
    # share of the translations' words equal to the word before them, case-folded
    # (lanmt_cli.metrics.word_repeat_rate): doubled words, the typical NAT error
    word_repeat_rate: float


def score(hypotheses: list[str], references: list[list[str]]) -> Quality:
    """BLEU (13a, cased), BLEU (intl, lower-cased) and chrF by sacreBLEU; the word repeat
    rate."""
    from sacrebleu.metrics import BLEU, CHRF

    from lanmt_cli.metrics import word_repeat_rate

    bleu, paper_bleu, chrf = BLEU(), BLEU(tokenize="intl", lowercase=True), CHRF()
    b = bleu.corpus_score(hypotheses, references)
    s = paper_bleu.corpus_score(hypotheses, references)
    c = chrf.corpus_score(hypotheses, references)
    return Quality(
        bleu=b.score,
        bleu_signature=str(bleu.get_signature()),
        bleu_text=b.format(),
        bleu_intl_lc=s.score,
        bleu_intl_lc_signature=str(paper_bleu.get_signature()),
        chrf=c.score,
        chrf_signature=str(chrf.get_signature()),
        word_repeat_rate=word_repeat_rate(hypotheses),
    )


@dataclass
class Row:
    """One decoder's figures."""

    label: str  # the spec as given, e.g. "latent-search:samples=20"
    decoder: str  # registered name
    options: dict[str, Any]  # every option value, defaults included
    baseline: bool
    model_kind: str  # the model it decodes with: lanmt, or transformer (the teacher)
    needs_teacher: bool
    latency: Latency | None
    throughput: Throughput
    quality: Quality | None
    translations: list[str] = field(repr=False)
    translations_file: str | None = None  # set once written (write_translations)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["translations"]
        return d


@dataclass
class Report:
    date: str  # UTC, ISO 8601
    environment: dict[str, Any]
    model: dict[str, Any]
    test_set: dict[str, Any]
    settings: dict[str, Any]
    rows: list[Row]

    @property
    def baseline(self) -> Row:
        return next(r for r in self.rows if r.baseline)

    def as_dict(self) -> dict[str, Any]:
        return {
            "format_version": REPORT_VERSION,
            "date": self.date,
            "environment": self.environment,
            "model": self.model,
            "test_set": self.test_set,
            "settings": self.settings,
            "decoders": [r.as_dict() for r in self.rows],
        }


# --- running it --------------------------------------------------------------------------


def _synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(device: str) -> dict[str, Any]:
    """What the figures depend on: hardware, threads, library versions."""
    cuda = torch.device(device).type == "cuda"
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name(device) if cuda else cpu_name(),
        "cpu": cpu_name(),
        "cpu_count": affinity,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "lanmt": _version("lanmt"),
        "sacrebleu": _version("sacrebleu"),
        "ctranslate2": _version("ctranslate2"),
        "numpy": np.__version__,
    }


def _model_info(bundle, translators: dict[str, Translator], teacher) -> dict[str, Any]:
    info: dict[str, Any] = {
        "path": str(bundle.path),
        "kind": bundle.kind,
        "languages": bundle.meta.get("languages") or {},
        "dtype": bundle.meta.get("dtype"),
        "parameters": count_parameters(bundle.model),
        "teacher": None,
        "teacher_parameters": None,
    }
    for tr in translators.values():  # the teacher some decoder ran, if any
        cls = tr.decoder_class
        if cls.needs_teacher or cls.model_kind == "transformer":
            model = tr.decoder.teacher if cls.needs_teacher else tr.decoder.model
            path = teacher.path if teacher is not None else bundle.teacher_path
            info.update(teacher=str(path), teacher_parameters=count_parameters(model))
            break
    return info


class _GcPaused:
    """Garbage collection off inside the block (as timeit does), restored after."""

    def __enter__(self) -> None:
        self.was = gc.isenabled()
        gc.collect()
        gc.disable()

    def __exit__(self, *exc) -> None:
        if self.was:
            gc.enable()


def bench(
    bundle,
    specs: Sequence[str] | None,
    test_set: TestSet,
    *,
    baseline: str = BASELINE,
    teacher=None,
    evaluate: bool = False,
    batch_tokens: int = 4096,
    warmup: int = 10,
    latency_sentences: int | None = None,
    repeats: int = 1,
    seed: int = 0,
    say: Callable[[str], None] = lambda message: None,
) -> Report:
    """Measure each decoder of `specs` (plus the baseline, first) on `test_set`.

    bundle: a loaded `Bundle` (shared by every decoder); teacher: a loaded Transformer
    `Bundle` replacing the bundle's own. latency_sentences: how many sentences are timed one
    at a time (None: all, 0: no latency run). warmup: sentences each decoder translates,
    untimed, before anything is measured. repeats: batched runs of the whole set per decoder
    (the median counts).
    """
    if evaluate and not test_set.references:
        raise LanmtError("--evaluate needs references: give --ref FILE or --test-set")
    labels = check_specs(baseline, specs or default_decoders(bundle))
    device = bundle.device
    translators: dict[str, Translator] = {}
    for label in labels:
        translators[label] = Translator(
            bundle, label, device=device, batch_tokens=batch_tokens, seed=seed,
            teacher=teacher,
        )  # fmt: skip
    sources = test_set.sources
    # The latency sentences: the first non-empty ones, as each decoder splits them.
    chosen = [i for i, s in enumerate(sources) if s.strip()]
    chosen = chosen[:latency_sentences] if latency_sentences is not None else chosen
    pieces = {label: _pieces(tr, [sources[i] for i in chosen]) for label, tr in translators.items()}

    say(f"warm-up: {min(warmup, len(chosen))} sentences per decoder, alone and batched")
    for label, tr in translators.items():
        for p in pieces[label][:warmup]:
            tr.decode_batch(p)
        if warmup:
            tr.translate(sources[:warmup])

    seconds = _time_latency(translators, pieces, device, say) if chosen else {}

    runs: dict[str, list[float]] = {label: [] for label in labels}
    peaks: dict[str, float | None] = {}
    translations: dict[str, list[str]] = {}
    for r in range(repeats):  # decoders take turns, in a rotating order
        for label in labels[r % len(labels) :] + labels[: r % len(labels)]:
            say(f"batched: {label} on {len(sources)} sentences (run {r + 1} of {repeats})")
            elapsed, translations[label], peak = _time_batched(translators[label], sources)
            runs[label].append(elapsed)
            peaks[label] = max(peaks.get(label) or 0.0, peak) if peak is not None else None
    throughputs = {
        label: Throughput.of(
            len(sources), _target_tokens(bundle, translations[label]), t, peaks[label]
        )
        for label, t in runs.items()
    }

    rows = []
    base = seconds.get(baseline)
    for label, tr in translators.items():
        latency = None
        if label in seconds:
            latency = latency_stats(seconds[label])
            latency.speedup = float(np.mean(base) / np.mean(seconds[label]))
            latency.speedup_ci95 = speedup_interval(base, seconds[label], seed)
        thr = throughputs[label]
        thr.speedup = throughputs[baseline].seconds / thr.seconds
        quality = score(translations[label], test_set.references) if evaluate else None
        rows.append(
            Row(
                label=label,
                decoder=tr.name,
                options=runtime_options(tr),
                baseline=label == baseline,
                model_kind=tr.decoder_class.model_kind,
                needs_teacher=tr.decoder_class.needs_teacher,
                latency=latency,
                throughput=thr,
                quality=quality,
                translations=translations[label],
            )
        )
    origin = test_set.origin
    return Report(
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        environment=environment(device),
        model=_model_info(bundle, translators, teacher),
        test_set={
            **origin,
            "sentences_total": test_set.total,
            "sentences": len(sources),
            "latency_sentences": len(chosen),
            "empty_lines": len(sources) - sum(1 for s in sources if s.strip()),
            "sources_sha256": hashlib.sha256("\n".join(sources).encode()).hexdigest(),
        },
        settings={
            "baseline": baseline,
            "batch_tokens": batch_tokens,
            "warmup": warmup,
            "repeats": repeats,
            "seed": seed,
            "evaluate": evaluate,
            "latency_order": "interleaved by sentence, rotating",
        },
        rows=rows,
    )


def runtime_options(tr: Translator) -> dict[str, Any]:
    """The decoder's options plus what it ran on: `runtime`, the engine and precision of each
    model it ran (e.g. "onnx int8 + onnx float32", "onnx float32 + ctranslate2 float32"), and
    the NAT model's actual `compute_type` (`compute_type_requested` where that differs)."""
    options = dict(tr.options)
    requested = options.get("compute_type")
    parts = []
    if tr.decoder.runtime is not None:  # the NAT model's
        options["compute_type"] = tr.decoder.runtime.compute_type
        parts.append(tr.decoder.runtime.label)
    if options.get("backend") == "ctranslate2":
        from lanmt_cli import ct2

        model = tr.decoder.teacher if tr.decoder_class.needs_teacher else tr.decoder.model
        wanted = getattr(tr.decoder_class, "teacher_compute_type", lambda o: o["compute_type"])
        actual = ct2.engine_for(model, wanted(tr.options)).translator.compute_type
        parts.append(f"ctranslate2 {actual}")
        if tr.decoder.runtime is None:
            options["compute_type"] = actual
    elif options.get("backend") == "onnx":  # teacher-rescore's scoring
        from lanmt_cli.onnx_teacher import graph_type

        wanted = getattr(tr.decoder_class, "teacher_compute_type", lambda o: o["compute_type"])
        parts.append(f"onnx {graph_type(wanted(tr.options))}")
    elif options.get("backend") == "torch" or tr.decoder.runtime is None:
        from lanmt_cli.quantize import dtype_name

        model = tr.decoder.teacher if tr.decoder_class.needs_teacher else tr.decoder.model
        parts.append(f"torch {dtype_name(model)}")
    if requested is not None and requested != options["compute_type"]:
        options["compute_type_requested"] = requested
    options["runtime"] = " + ".join(parts)
    return options


def _pieces(tr: Translator, lines: list[str]) -> list[list[list[int]]]:
    """Token ids of each line, as the pieces the translator decodes it in (usually one)."""
    return [tr.split(line, ids)[0] for line, ids in zip(lines, tr.encode(lines), strict=True)]


def _time_latency(
    translators: dict[str, Translator],
    pieces: dict[str, list[list[list[int]]]],
    device: str,
    say: Callable[[str], None],
) -> dict[str, list[float]]:
    """Seconds per sentence per decoder at batch size 1; decoders take turns per sentence."""
    labels = list(translators)
    n = len(next(iter(pieces.values())))
    seconds: dict[str, list[float]] = {label: [] for label in labels}
    say(f"latency: {n} sentences, one at a time, {len(labels)} decoders taking turns")
    report_every = max(1, n // 10)
    with _GcPaused():
        for i in range(n):
            turn = i % len(labels)
            for label in labels[turn:] + labels[:turn]:
                tr, sentence = translators[label], pieces[label][i]
                _synchronize(device)
                start = time.perf_counter()
                tr.decode_batch(sentence)
                _synchronize(device)
                seconds[label].append(time.perf_counter() - start)
            if (i + 1) % report_every == 0 and i + 1 < n:
                say(f"latency: {i + 1}/{n} sentences")
    return seconds


def _time_batched(tr: Translator, sources: list[str]) -> tuple[float, list[str], float | None]:
    """Seconds to translate `sources` in batches, the translations, peak CUDA memory (MiB)."""
    device = tr.device
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    gc.collect()
    _synchronize(device)
    start = time.perf_counter()
    results = tr.translate(sources)
    _synchronize(device)
    elapsed = time.perf_counter() - start
    texts = [r.translation.replace("\n", " ") for r in results]
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None
    return elapsed, texts, peak


def _target_tokens(bundle, texts: list[str]) -> int:
    """Target SentencePiece tokens of `texts`: one count for every decoder."""
    return sum(len(ids) for ids in bundle.tokenizer.encode_tgt(texts))
