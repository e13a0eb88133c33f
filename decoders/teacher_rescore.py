"""teacher-rescore: latent search whose candidates the autoregressive teacher chooses between.

The distinct (post-processed) candidates of every sentence are scored with log p_AR(y | x),
EOS included, by teacher forcing (no search): on CTranslate2's `score_batch` by default, or in
one batched PyTorch forward pass (`backend=torch`). The highest wins; with `normalize=true`
the score is per token (EOS counted), as candidates of different lengths (`lengths=N`) need.
The candidates reported carry the teacher's scores.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lanmt_cli import ct2
from lanmt_cli.config import PAD
from lanmt_cli.decoders.beam import BACKEND_OPTIONS
from lanmt_cli.decoders.latent_search import Candidates, LatentSearch, chunks, distinct_best_first
from lanmt_cli.decoders.refine import pad_tokens
from lanmt_cli.decoding import Option
from lanmt_cli.postprocess import clean_ids


class TeacherRescore(LatentSearch):
    name = "teacher-rescore"
    help = "Latent search whose candidates the autoregressive teacher scores; its best wins."
    options = (
        *LatentSearch.options,
        Option("normalize", bool, False, "rank by the teacher's score per token (EOS counted)"),
        *BACKEND_OPTIONS,
    )
    needs_teacher = True

    @classmethod
    def check_options(cls, options):
        checked = super().check_options(options)
        ct2.options_check(checked)
        return checked

    def rank(self, src: Tensor, cands: list[Candidates]) -> list[Candidates]:
        lengths = (src != PAD).sum(1).tolist()
        # What would be printed is what the teacher scores: specials dropped, repeats collapsed.
        distinct = [
            list(dict.fromkeys(tuple(clean_ids(t)) for t, _ in sentence)) for sentence in cands
        ]
        rows = [i for i in range(len(cands)) for _ in distinct[i]]
        ys = [list(y) for i in range(len(cands)) for y in distinct[i]]
        scores = self.teacher_scores(src, lengths, rows, ys)
        if self.opts["normalize"]:
            scores = [s / (len(y) + 1) for s, y in zip(scores, ys, strict=True)]
        pairs = iter(zip(ys, scores, strict=True))
        return [distinct_best_first([next(pairs) for _ in distinct[i]]) for i in range(len(cands))]

    def teacher_scores(
        self, src: Tensor, lengths: list[int], rows: list[int], ys: list[list[int]]
    ) -> list[float]:
        """log p_AR(ys[j] | src[rows[j]]), EOS included, for every candidate j."""
        if self.opts["backend"] == "ctranslate2":
            sources = [row[:n] for row, n in zip(src.tolist(), lengths, strict=True)]
            engine = ct2.engine_for(self.teacher, self.opts["compute_type"])
            per_token = engine.score([sources[r] for r in rows], ys)
            return [sum(t) for t in per_token]
        scores: list[float] = []
        samples = self.opts["samples"] * self.opts["lengths"]
        start = 0
        for a, b in chunks(lengths, samples, self.max_expanded_tokens):
            end = start
            while end < len(rows) and rows[end] < b:
                end += 1
            index = torch.tensor([r - a for r in rows[start:end]], device=src.device)
            memory = self.teacher.encode(src[a:b, : max(lengths[a:b])]).select(index)
            y = pad_tokens(ys[start:end], src.device)
            scores.extend(self.teacher.score(None, y, memory).tolist())
            start = end
        return scores
