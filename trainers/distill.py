"""Knowledge distillation: the teacher beam-translates the training sources.

Sentences are translated shortest first, in batches of at most `max_tokens` source
tokens, and saved in chunks of `CHUNK` sentences (JSON, each written atomically), so
an interrupted run continues with the first missing chunk. At the end the
translations become a new split of the prepared data directory (`distill` by
default), tokenized and filtered like the training data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lanmt_cli.errors import LanmtError
from lanmt_cli.textio import atomic_file

CHUNK = 1000  # sentences per resumable piece of work
PLAN_FILE = "plan.json"
RESULT_FILE = "result.json"


def _check_plan(out: Path, plan: dict[str, Any]) -> None:
    """A run continues only with the settings it started with."""
    path = out / PLAN_FILE
    if path.is_file():
        before = json.loads(path.read_text())
        if before != plan:
            changed = sorted(k for k in plan if before.get(k) != plan[k])
            raise LanmtError(
                f"{out} holds a distillation made with other settings ({', '.join(changed)}); "
                "add --force to start it again"
            )
    else:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(plan, indent=2) + "\n")


def distill(
    data_dir: Path,
    teacher_dir: Path,
    out: Path,
    *,
    split: str = "train",
    target_split: str = "distill",
    beam: int = 4,
    length_penalty: float = 1.0,
    max_tokens: int = 4096,
    device: str = "auto",
    threads: int = 0,
    show: bool = True,
    backend: str = "auto",
) -> dict[str, Any]:
    """Translate split `split` of `data_dir` with the teacher; add it as `target_split`.

    backend: `ctranslate2` (the teacher converted once, see lanmt_cli.ct2), `torch`, or
    `auto`: CTranslate2 on a CPU, PyTorch on a GPU.

    `out` keeps the chunks, the plain-text pair files and result.json. `show`: the
    progress on stderr (a bar on a terminal, a line every 30 s elsewhere).
    """
    import numpy as np
    import torch

    from lanmt_cli import ct2
    from lanmt_cli.bundle import load_bundle
    from lanmt_cli.data import Corpus, binarize_split, read_meta, token_batches
    from lanmt_cli.decoding import teacher_search
    from lanmt_cli.devices import pick_device
    from lanmt_cli.progress import counter
    from lanmt_cli.trainers.validate import split_text

    if threads:
        torch.set_num_threads(threads)
    device = pick_device(device)
    data_dir, out = Path(data_dir).resolve(), Path(out).resolve()
    teacher = load_bundle(teacher_dir, device=device)
    if backend == "auto":
        backend = "ctranslate2" if device == "cpu" else "torch"
    if backend not in ct2.BACKENDS:
        raise LanmtError(f"unknown backend {backend!r} (known: {', '.join(ct2.BACKENDS)})")
    if backend == "ctranslate2":
        ct2.engine_for(teacher.model)  # converted (or found) before the first batch
    if teacher.kind != "transformer":
        raise LanmtError(f"{teacher_dir} holds a {teacher.kind} model, not a teacher")
    meta = read_meta(data_dir)
    if (teacher.config.src_vocab, teacher.config.tgt_vocab) != (
        meta["src_vocab_size"],
        meta["tgt_vocab_size"],
    ):
        raise LanmtError(f"the teacher {teacher_dir} was not trained on {data_dir}'s vocabulary")
    corpus = Corpus.open(data_dir, split)
    plan = {
        "teacher": str(Path(teacher_dir).resolve()),
        "data": str(data_dir),
        "split": split,
        "sentences": len(corpus),
        "beam": beam,
        "length_penalty": length_penalty,
        "chunk": CHUNK,
    }
    _check_plan(out, plan)
    chunks = out / "chunks"
    chunks.mkdir(exist_ok=True)
    order = np.argsort(corpus.src_lengths, kind="stable")  # shortest first: even batches
    names = [chunks / f"{k:05d}.json" for k in range(-(-len(order) // CHUNK))]
    done = sum(min(CHUNK, len(order) - k * CHUNK) for k, p in enumerate(names) if p.is_file())

    description = f"distilling {split} (beam {beam})"
    with counter(len(order), description, done, show=show, plain_every=30) as advance:
        for k, path in enumerate(names):
            if path.is_file():
                continue
            ids = order[k * CHUNK : (k + 1) * CHUNK]
            lengths = corpus.src_lengths[ids]
            tokens: dict[int, list[int]] = {}
            for part in token_batches(lengths, lengths, max_tokens, seed=0, epoch=0, shuffle=False):
                rows = ids[part]
                src = corpus.collate(rows)[0].to(device)
                found = teacher_search(teacher.model, src, beam, length_penalty, backend=backend)
                for i, output in zip(rows.tolist(), found, strict=True):
                    tokens[i] = output.tokens
                advance(len(rows))
            with atomic_file(path) as tmp:
                tmp.write_text(
                    json.dumps(
                        {"indices": ids.tolist(), "tokens": [tokens[i] for i in ids.tolist()]}
                    )
                )

    targets: list[list[int]] = [[] for _ in range(len(corpus))]
    for path in names:
        piece = json.loads(path.read_text())
        for i, t in zip(piece["indices"], piece["tokens"], strict=True):
            targets[i] = t
    files = {
        "src": (out / f"{split}.src", split_text(data_dir, split, "src", teacher.tokenizer)),
        "tgt": (out / f"{split}.distill.tgt", teacher.tokenizer.decode_tgt(targets)),
    }
    for path, lines in files.values():
        with atomic_file(path) as tmp:
            tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    stats = binarize_split(data_dir, target_split, files["src"][0], files["tgt"][0], force=True)
    result = {
        **plan,
        "backend": backend,
        "target_split": target_split,
        "kept": stats.kept,
        "pairs": stats.pairs,
    }
    with atomic_file(out / RESULT_FILE) as tmp:  # marks the distillation done: whole or not at all
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    return result
