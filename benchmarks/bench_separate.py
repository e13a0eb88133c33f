"""CTranslate2 and lanmt's NAT decoders, each measured in a process of its own.

    python benchmarks/bench_separate.py [--threads 2] [--sentences 1000] [--latency 150]
        [--rounds 3] [--only LABEL ...]

PyTorch and CTranslate2 loaded in one process share one OpenMP runtime, and their thread
teams count together: with two threads each on two cores, both run their parallel regions
more slowly than alone. `lanmt bench` measures every decoder in one process (one loaded
model, decoders taking turns); this script gives each system a fresh process instead:
CTranslate2 called as a user of it would (its own Python API on the converted teacher,
no PyTorch loaded), and each lanmt decoder through `Translator` (no CTranslate2 loaded).
test_2016_flickr of Multi30k (en-de). Columns: BLEU (sacreBLEU 13a, cased), mean ms per
sentence decoded alone (the first --latency sentences, after a warm-up), sentences per
second translating the set in 4,096-token batches (the better of two runs). CTranslate2's
batch-1 figure is the faster of 1 thread and --threads (the column says which), its batched
figure the fastest of one batch at a time on --threads and --threads batches at a time on
one thread each (`inter_threads`) in batches of 4,096, 2,048 or 1,024 tokens (the column
says which; every setting's figures follow the table). Prints a Markdown table; run it on
an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from multi30k import read, test_set_options, timed

CT2_SYSTEMS = [  # (row label, beam size, compute type)
    ("CTranslate2 greedy, fp32", 1, "default"),
    ("CTranslate2 beam 3, fp32", 3, "default"),
    ("CTranslate2 greedy, int8", 1, "int8"),
    ("CTranslate2 beam 3, int8", 3, "int8"),
]
LANMT_SYSTEMS = [  # (row label, decoder spec)
    ("lanmt one-shot (default: compute_type=auto)", "one-shot"),
    ("lanmt refine1 (default: compute_type=auto)", "refine1"),
    ("lanmt one-shot, float32", "one-shot:compute_type=float32"),
    ("lanmt refine1, float32", "refine1:compute_type=float32"),
    ("lanmt one-shot, int8", "one-shot:compute_type=int8"),
    ("lanmt refine1, int8", "refine1:compute_type=int8"),
    ("lanmt one-shot, PyTorch fp32", "one-shot:runtime=torch,compute_type=float32"),
    ("lanmt refine1, PyTorch fp32", "refine1:runtime=torch,compute_type=float32"),
    ("lanmt teacher-rescore (default: length beam 5, refined)", "teacher-rescore"),
    ("lanmt teacher-rescore, int8", "teacher-rescore:compute_type=int8"),
]


def run_ct2(args, beam: int, compute_type: str) -> dict:
    """CTranslate2 alone: token names in, token names out, no lanmt decoding code around it."""
    import ctranslate2

    from lanmt_cli.ct2 import _ids, _names
    from lanmt_cli.postprocess import detokenize
    from lanmt_cli.tokenizer import Tokenizer

    assert "torch" not in sys.modules, "the CTranslate2 process must not load PyTorch"
    tokenizer = Tokenizer.from_dir(Path(args.model))
    src = read(args.data / "test_2016_flickr.en.gz", args.sentences)
    names = [_names(ids) for ids in tokenizer.encode_src(src)]
    # at most the teacher's positions in and out (lanmt splits a longer input in pieces; no
    # sentence of test_2016_flickr comes near the shipped teacher's 256)
    options = dict(beam_size=beam, max_decoding_length=args.max_len, min_decoding_length=0,
                   max_input_length=args.max_len)  # fmt: skip
    latency = {}  # batch 1 on 1 thread and on --threads: the row reports the faster
    for threads in sorted({1, args.threads}):
        translator = ctranslate2.Translator(
            args.ct2_dir, device="cpu", compute_type=compute_type, inter_threads=1,
            intra_threads=threads,
        )  # fmt: skip
        for s in names[:10]:
            translator.translate_batch([s], **options)
        latency[threads] = [timed(lambda s=s, t=translator: t.translate_batch([s], **options))
                            for s in names[: args.latency]]  # fmt: skip
    threads = min(latency, key=lambda t: sum(latency[t]))
    # batched: the fastest of one batch at a time on --threads, and --threads batches at a
    # time on one thread each (inter_threads) in batches of 4,096, 2,048 or 1,024 tokens
    del translator
    settings = [(1, args.threads, 4096)]
    if args.threads > 1:
        settings += [(args.threads, 1, tokens) for tokens in (4096, 2048, 1024)]
    results = []

    def batched(translator, tokens: int) -> float:
        return timed(lambda: results.__setitem__(slice(None), translator.translate_batch(
            names, max_batch_size=tokens, batch_type="tokens", **options)))  # fmt: skip

    tried, outputs = {}, {}
    for inter, intra, tokens in settings:
        translator = ctranslate2.Translator(
            args.ct2_dir, device="cpu", compute_type=compute_type, inter_threads=inter,
            intra_threads=intra,
        )  # fmt: skip
        translator.translate_batch(names[:64], **options)
        tried[(inter, intra, tokens)] = [batched(translator, tokens) for _ in range(2)]
        outputs[(inter, intra, tokens)] = [_ids(r.hypotheses[0]) for r in results]
        del translator
    best = min(tried, key=lambda k: min(tried[k]))
    named = "{} x {} threads, {} tokens".format
    return {
        "latency": latency[threads],
        "latency_threads": threads,
        "batched": tried[best],
        "batched_setting": named(*best),
        "hyps": detokenize(tokenizer, outputs[best], True),
        "tried": {named(*k): v for k, v in tried.items()},
    }


def run_lanmt(args, spec: str) -> dict:
    """A lanmt decoder through Translator, as `lanmt translate` runs it."""
    from lanmt_cli.translator import Translator

    tr = Translator(args.model, spec, threads=args.threads)
    src = read(args.data / "test_2016_flickr.en.gz", args.sentences)
    pieces = [tr.split(line, ids)[0] for line, ids in zip(src, tr.encode(src), strict=True)]
    for p in pieces[:10]:
        tr.decode_batch(p)
    latency = [timed(lambda p=p: tr.decode_batch(p)) for p in pieces[: args.latency]]
    results = []
    batched = [timed(lambda: results.__setitem__(slice(None), tr.translate(src))) for _ in range(2)]
    loaded = "ctranslate2" in sys.modules
    return {"latency": latency, "batched": batched, "ct2_loaded": loaded,
            "hyps": [r.translation for r in results]}  # fmt: skip


def converted_teacher(model: str) -> dict:
    """The CTranslate2 folder of the bundle's teacher (converted once, lanmt_cli.ct2) and
    the teacher's longest output (its max_len: the positions it has)."""
    from lanmt_cli import ct2
    from lanmt_cli.bundle import load_bundle

    bundle = load_bundle(model)
    teacher = bundle.teacher().model
    folder = ct2.model_dir(teacher, getattr(teacher, "bundle_dir", None))
    return {"ct2_dir": str(folder), "max_len": teacher.config.max_len}


def child(args) -> None:
    kind, _, what = args.child.partition(":")
    if kind == "convert":
        out = converted_teacher(args.model)
    elif kind == "ct2":
        beam, compute_type = what.split(",")
        out = run_ct2(args, int(beam), compute_type)
    else:
        out = run_lanmt(args, what)
    print(json.dumps(out))


def spawn(args, what: str, extra: list[str] = ()) -> dict:
    cmd = [sys.executable, __file__, "--child", what, "--model", args.model,
           "--data", str(args.data), "--threads", str(args.threads),
           "--sentences", str(args.sentences), "--latency", str(args.latency), *extra]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{what} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    test_set_options(parser, sentences=1000, latency=150)
    parser.add_argument("--only", nargs="*", help="run only the rows whose label has one of these")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every system this many times, rounds in rotating order, "
                             "and report medians and ranges")  # fmt: skip
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--ct2-dir", help=argparse.SUPPRESS)
    parser.add_argument("--max-len", type=int, default=256, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    import sacrebleu

    ref = read(args.data / "test_2016_flickr.de.gz", args.sentences)
    teacher = spawn(args, "convert")

    def wanted(label: str) -> bool:
        return not args.only or any(part in label for part in args.only)

    systems = [(label, f"ct2:{beam},{ct}", ["--ct2-dir", teacher["ct2_dir"],
                                            "--max-len", str(teacher["max_len"])])
               for label, beam, ct in CT2_SYSTEMS if wanted(label)]  # fmt: skip
    systems += [(label, f"lanmt:{spec}", []) for label, spec in LANMT_SYSTEMS if wanted(label)]
    rounds: dict[str, list[dict]] = {label: [] for label, _, _ in systems}
    for r in range(args.rounds):  # every system once a round, each round in another order
        for label, what, extra in systems[r % len(systems) :] + systems[: r % len(systems)]:
            rounds[label].append(spawn(args, what, extra))
    runs = [(label, rounds[label]) for label, _, _ in systems]
    print(f"{args.sentences} sentences of test_2016_flickr (en-de), {args.threads} threads, "
          f"each system in its own process, {args.rounds} round(s); "
          f"model {args.model}")  # fmt: skip
    print()
    many = args.rounds > 1
    of = f"median of {args.rounds} rounds (range)" if many else "one round"
    print(f"| system | BLEU | batch 1, ms/sentence (mean of {args.latency}; {of}) | batch 1 "
          f"threads | batched, sentences/s (best of 2; {of}) | batched: batches at once x "
          "threads each, batch size | CTranslate2 in the process |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")

    def figure(values: list[float]) -> str:
        middle = statistics.median(values)
        return f"{middle:.1f} ({min(values):.1f}-{max(values):.1f})" if many else f"{middle:.1f}"

    for label, rs in runs:
        bleus = {round(sacrebleu.corpus_bleu(r["hyps"], [ref]).score, 2) for r in rs}
        ms = [1000 * sum(r["latency"]) / len(r["latency"]) for r in rs]
        rates = [args.sentences / min(r["batched"]) for r in rs]
        r = rs[0]
        loaded = "yes" if r.get("ct2_loaded", True) else "no"
        threads = "/".join(sorted({str(r.get("latency_threads", args.threads)) for r in rs}))
        settings = sorted({r.get("batched_setting", f"1 x {args.threads} threads, 4096 tokens")
                           for r in rs})  # fmt: skip
        bleu = "/".join(f"{b:.2f}" for b in sorted(bleus))  # one figure unless outputs vary
        print(f"| {label} | {bleu} | {figure(ms)} | {threads} | {figure(rates)} | "
              f"{'; '.join(settings)} | {loaded} |")  # fmt: skip
    for label, rs in runs:
        for i, r in enumerate(rs):
            if "tried" in r:
                print(f"\n{label}, round {i + 1}, batched sentences/s (2 runs) per setting: "
                      + "; ".join(f"{k}: {', '.join(f'{args.sentences / t:.0f}' for t in v)}"
                                  for k, v in r["tried"].items()))  # fmt: skip
    print()
    print(
        "CTranslate2's batch-1 rows are its faster of 1 and --threads threads (column 4), its "
        "batched rows its fastest setting (column 6); lanmt runs on --threads throughout."
    )


if __name__ == "__main__":
    main()
