"""The teacher on CTranslate2 and on PyTorch beside lanmt's NAT decoders, in one process.

    python benchmarks/bench_ctranslate2.py [--threads 2] [--sentences 1000] [--latency 200]

One process, one loaded model, the same threads for every system (torch and CTranslate2),
test_2016_flickr of Multi30k (en-de). Rows: CTranslate2 greedy and beam 3 in float32 and int8,
a direct CTranslate2 call (no lanmt code around it) for beam 3, lanmt's own PyTorch greedy
and beam 3, one-shot and refine1 (their default, compute_type=auto, and with --quantize
int8 on ONNX Runtime, float32 on PyTorch and bfloat16 on PyTorch where the CPU has it).
Columns: BLEU (sacreBLEU 13a, cased), mean ms per sentence decoded alone
(the first --latency sentences, systems taking turns per sentence), seconds to translate the
set in 4,096-token batches (two repeats) and in batches of 64 sentences (sorted by length).
Prints a Markdown table.
"""

from __future__ import annotations

import argparse

from multi30k import read, test_set_options, timed

SYSTEMS = [  # (row label, decoder, options)
    ("CTranslate2 greedy, fp32", "beam", {"beam": 1}),
    ("CTranslate2 greedy, int8", "beam", {"beam": 1, "compute_type": "int8"}),
    ("CTranslate2 beam 3, fp32", "beam", {}),
    ("CTranslate2 beam 3, int8", "beam", {"compute_type": "int8"}),
    ("lanmt teacher greedy (PyTorch)", "beam", {"beam": 1, "backend": "torch"}),
    ("lanmt teacher beam 3 (PyTorch)", "beam", {"backend": "torch"}),
    ("lanmt one-shot (compute_type=auto)", "one-shot", {}),
    ("lanmt refine1 (compute_type=auto)", "refine", {"steps": 1}),
    ("lanmt teacher-rescore, length beam 5", "teacher-rescore",
     {"samples": 1, "noise": 0.0, "steps": 0, "lengths": 5, "normalize": True}),
]  # fmt: skip
QUANTIZED = [
    ("lanmt one-shot, int8", "one-shot", {"compute_type": "int8"}),
    ("lanmt refine1, int8", "refine", {"steps": 1, "compute_type": "int8"}),
    ("lanmt one-shot, PyTorch fp32", "one-shot", {"runtime": "torch", "compute_type": "float32"}),
    ("lanmt refine1, PyTorch fp32", "refine", {"steps": 1, "runtime": "torch"}),
]
BF16 = [  # where the CPU multiplies bfloat16
    ("lanmt one-shot, PyTorch bf16", "one-shot", {"compute_type": "bfloat16"}),
    ("lanmt refine1, PyTorch bf16", "refine", {"steps": 1, "compute_type": "bfloat16"}),
]


def by_sentences(tr, ids: list[list[int]], size: int) -> None:
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for k in range(0, len(order), size):
        tr.decode_batch([ids[i] for i in order[k : k + size]])


def direct_ct2(engine, ids: list[list[int]], beam: int) -> None:
    """CTranslate2 itself, as a user of it would call it: token strings in, 4,096 tokens."""
    from lanmt_cli.ct2 import _names

    engine.translator.translate_batch(
        [_names(s) for s in ids], beam_size=beam, max_batch_size=4096, batch_type="tokens",
        max_decoding_length=256, min_decoding_length=0, max_input_length=0,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    test_set_options(parser, sentences=1000, latency=200)
    parser.add_argument("--repeats", type=int, default=2, help="runs in 4,096-token batches")
    parser.add_argument(
        "--quantize", action="store_true", help="also int8, PyTorch and bf16 NAT rows"
    )
    args = parser.parse_args()

    import sacrebleu
    import torch

    from lanmt_cli import ct2, registry
    from lanmt_cli.bundle import load_bundle
    from lanmt_cli.translator import Translator

    torch.set_num_threads(args.threads)
    src = read(args.data / "test_2016_flickr.en.gz", args.sentences)
    ref = read(args.data / "test_2016_flickr.de.gz", args.sentences)
    bundle = load_bundle(args.model)
    from lanmt_cli.quantize import native_bf16

    systems = SYSTEMS + (QUANTIZED + (BF16 if native_bf16() else []) if args.quantize else [])
    systems = [s for s in systems if _available(registry, s)]
    translators = {label: Translator(bundle, name, opts) for label, name, opts in systems}
    ids = next(iter(translators.values())).encode(src)
    teacher = bundle.teacher().model
    engine = ct2.engine_for(teacher, "default", args.threads)

    for tr in translators.values():  # warm-up
        for s in ids[:5]:
            tr.decode_batch([s])
        tr.translate(src[:20])
    latency: dict[str, list[float]] = {label: [] for label in translators}
    labels = list(translators)
    for k, s in enumerate(ids[: args.latency]):  # systems take turns, rotating
        for label in labels[k % len(labels) :] + labels[: k % len(labels)]:
            latency[label].append(timed(lambda tr=translators[label], s=s: tr.decode_batch([s])))

    rows = []
    for label, tr in translators.items():
        out: list[str] = []
        batched = [
            timed(lambda tr=tr, out=out: out.__setitem__(slice(None), _texts(tr, src)))
            for _ in range(args.repeats)
        ]
        per64 = timed(lambda tr=tr: by_sentences(tr, ids, 64))
        bleu = sacrebleu.corpus_bleu(out, [ref]).score
        ms = 1000 * sum(latency[label]) / max(1, len(latency[label]))
        rows.append((label, f"{bleu:.2f}", f"{ms:.1f}", " / ".join(f"{t:.2f}" for t in batched),
                     f"{per64:.2f}"))  # fmt: skip
    direct = [timed(lambda: direct_ct2(engine, ids, 3)) for _ in range(args.repeats)]
    rows.append(("CTranslate2 beam 3, fp32, direct call", "", "",
                 " / ".join(f"{t:.2f}" for t in direct), ""))  # fmt: skip

    print(f"{len(src)} sentences of test_2016_flickr (en-de), {args.threads} threads "
          f"(torch and CTranslate2), model {args.model}")  # fmt: skip
    print()
    print(f"| system | BLEU | batch 1, ms/sentence (mean of {min(args.latency, len(ids))}) "
          f"| batched, 4,096-token batches, s ({args.repeats} repeats) "
          "| batched, 64 sentences a batch, s |")  # fmt: skip
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def _texts(tr, src: list[str]) -> list[str]:
    return [r.translation for r in tr.translate(src)]


def _available(registry, system) -> bool:
    """A row whose decoder option does not exist (yet) is left out, with a note."""
    from lanmt_cli.errors import LanmtError

    try:
        registry.resolve(system[1], system[2])
    except LanmtError as err:
        print(f"skipping {system[0]}: {err}")
        return False
    return True


if __name__ == "__main__":
    main()
