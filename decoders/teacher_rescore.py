"""teacher-rescore: latent search whose candidates the autoregressive teacher chooses between.

The distinct (post-processed) candidates of every sentence are scored with log p_AR(y | x),
EOS included, by teacher forcing (no search). `backend` picks the teacher's runtime for it:
`auto` (the default) is ONNX Runtime where it is installed (`lanmt_cli.onnx_teacher`: one call,
in the NAT model's thread pool), else CTranslate2's `score_batch`; `onnx`, `ctranslate2` and
`torch` (one batched PyTorch forward pass per chunk of sentences) ask for one. The highest
wins; with `normalize=true` the score is per token (EOS counted), as candidates of different
lengths (`lengths=N`) need. The candidates reported carry the teacher's scores. One
`compute_type` sets both models' precision (`auto`: both int8 on a CPU with AVX2 or AVX-512,
else the NAT model's `auto` and the teacher's own type, float32; `int8`: both int8;
`bfloat16` scores on CTranslate2, which `auto` then picks).

Its defaults are a length beam, not sampling: the prior mean (the first sample always is) at
each of the 5 most likely lengths, each refined once, ranked per token (`samples=1,lengths=5,
normalize=true`); `teacher-rescore8` adds 7 samples around the mean at each length.
On Multi30k validation (the recipe's LaNMT stage at update 1,100, on 2026-11-26; first
300 sentences) that scored 30.80 BLEU, against 30.02 for 8 samples at noise 0.5 and 28.80 for the
same length beam without refining the candidates.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from lanmt_cli.config import PAD
from lanmt_cli.decoders.latent_search import Candidates, LatentSearch, chunks, distinct_best_first
from lanmt_cli.decoding import (
    SCORING_BACKEND_OPTION,
    SCORING_BACKENDS,
    Option,
    check_backend_options,
    scoring_backend,
    teacher_scores,
)
from lanmt_cli.postprocess import clean_ids

DEFAULTS = {"samples": 1, "lengths": 5}  # latent-search's options, as defaults here


class TeacherRescore(LatentSearch):
    name = "teacher-rescore"
    help = "Latent search whose candidates the autoregressive teacher scores; its best wins."
    option_specs = (
        *(dataclasses.replace(o, default=DEFAULTS.get(o.name, o.default))
          for o in LatentSearch.option_specs),
        Option("normalize", bool, True, "rank by the teacher's score per token (EOS counted)"),
        SCORING_BACKEND_OPTION,  # the teacher's runtime; compute_type is the NAT model's (above)
    )  # fmt: skip
    needs_teacher = True

    @classmethod
    def check_options(cls, options):
        """The options checked, `backend=auto` resolved to the runtime that scores."""
        checked = super().check_options(options)
        kind = cls.teacher_compute_type(checked)
        check_backend_options({**checked, "compute_type": kind}, SCORING_BACKENDS)
        return {**checked, "backend": scoring_backend(checked["backend"], kind)}

    @staticmethod
    def teacher_compute_type(options) -> str:
        """The teacher's compute type (CTranslate2's names) for the decoder's compute_type: the
        same; `auto` is int8 where the NAT model's `auto` is (a CPU with AVX2 or AVX-512: the
        shipped teacher's int8 scores kept teacher-rescore's BLEU, 34.47 against 34.45, and
        were faster), else the teacher's stored type."""
        from lanmt_cli.runtime import auto_compute_type

        if options["compute_type"] != "auto":
            return options["compute_type"]
        return "int8" if auto_compute_type() == "int8" else "default"

    def rank(self, src: Tensor, cands: list[Candidates]) -> list[Candidates]:
        lengths = (src != PAD).sum(1).tolist()
        # What would be printed is what the teacher scores: specials dropped, repeats collapsed.
        distinct = [
            list(dict.fromkeys(tuple(clean_ids(t)) for t, _ in sentence)) for sentence in cands
        ]
        rows = [i for i in range(len(cands)) for _ in distinct[i]]
        ys = [list(y) for i in range(len(cands)) for y in distinct[i]]
        scores = self.score_candidates(src, lengths, rows, ys)
        if self.options["normalize"]:
            scores = [s / (len(y) + 1) for s, y in zip(scores, ys, strict=True)]
        pairs = iter(zip(ys, scores, strict=True))
        return [distinct_best_first([next(pairs) for _ in distinct[i]]) for i in range(len(cands))]

    def score_candidates(
        self, src: Tensor, lengths: list[int], rows: list[int], ys: list[list[int]]
    ) -> list[float]:
        """log p_AR(ys[j] | src[rows[j]]), EOS included, for every candidate j."""
        o = self.options
        if o["backend"] != "torch":  # onnx or ctranslate2: the engine batches as it needs
            compute_type = self.teacher_compute_type(o)
            return teacher_scores(self.teacher, src, rows, ys, o["backend"], compute_type)
        scores: list[float] = []  # PyTorch: sentences in chunks, as they were decoded
        start = 0
        for a, b in chunks(lengths, o["samples"] * o["lengths"], self.max_expanded_tokens):
            end = start
            while end < len(rows) and rows[end] < b:
                end += 1
            sub = src[a:b, : max(lengths[a:b])]
            index = [r - a for r in rows[start:end]]
            scores.extend(teacher_scores(self.teacher, sub, index, ys[start:end], "torch"))
            start = end
        return scores
