"""teacher-rescore: latent search whose candidates the autoregressive teacher chooses between.

The distinct (post-processed) candidates of every sentence are scored with log p_AR(y | x),
EOS included, in one batched teacher forward pass (teacher forcing, no search); the highest
wins. The candidates reported carry the teacher's scores.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lanmt_cli.config import PAD
from lanmt_cli.decoders.latent_search import Candidates, LatentSearch, chunks, distinct_best_first
from lanmt_cli.decoders.refine import pad_tokens
from lanmt_cli.postprocess import clean_ids


class TeacherRescore(LatentSearch):
    name = "teacher-rescore"
    help = "Latent search whose candidates the autoregressive teacher scores; its best wins."
    needs_teacher = True

    def rank(self, src: Tensor, cands: list[Candidates]) -> list[Candidates]:
        lengths = (src != PAD).sum(1).tolist()
        # What would be printed is what the teacher scores: specials dropped, repeats collapsed.
        distinct = [
            list(dict.fromkeys(tuple(clean_ids(t)) for t, _ in sentence)) for sentence in cands
        ]
        ranked: list[Candidates] = []
        for a, b in chunks(lengths, self.opts["samples"], self.max_expanded_tokens):
            rows = [i for i in range(a, b) for _ in distinct[i]]
            ys = [list(y) for i in range(a, b) for y in distinct[i]]
            index = torch.tensor([r - a for r in rows], device=src.device)
            memory = self.teacher.encode(src[a:b, : max(lengths[a:b])]).select(index)
            scores = self.teacher.score(None, pad_tokens(ys, src.device), memory).tolist()
            pairs = iter(zip(ys, scores, strict=True))
            for i in range(a, b):
                ranked.append(distinct_best_first([next(pairs) for _ in distinct[i]]))
        return ranked
