"""refine-N: deterministic inference with a delta posterior (the paper's main decoder).

Start from the one-shot output; then, N times, set z to the posterior mean mu_q(x, y_t) of the
current output, re-predict the length and decode again. A sentence stops as soon as its output
repeats one it had before (unchanged, or a cycle such as A, B, A): from there on it would only
go round again. `refine1`, `refine3`, ... name this decoder with steps = 1, 3, ...

Length beam (`lengths=N`): candidate k of a sentence always decodes at the k-th most likely
length (k = 0 is plain refinement); the candidate with the best joint score
log p(length | x, z) + sum of its token log-probabilities wins.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lanmt_cli.decoding import Decoder, Option, OptionError, Output, decode_latent, pad_tokens

MAX_STEPS = 100  # refinement converges or cycles within a few steps; more is a mistake
MAX_LENGTHS = 20  # length-beam width limit


def refine(
    model,
    source,
    tokens: list[list[int]],
    scores: list[float],
    steps: int,
    ranks: Tensor | None = None,
    groups: list[int] | None = None,
) -> tuple[list[list[int]], list[float], int]:
    """Up to `steps` delta-posterior steps on every row; a row stops once its output repeats
    any earlier output of that row (a fixed point or a cycle).

    ranks (B,): each row's length rank (see `decode_latent`); None: the most likely length.
    groups: a sentence id per row; rows of one sentence with the same rank and output are
    refined once (refinement is deterministic). Returns the refined tokens, their scores (of
    the last pass each row took) and the number of passes taken.
    """
    tokens, scores = list(tokens), list(scores)
    seen = [{tuple(t)} for t in tokens]  # every output each row has had
    active = list(range(len(tokens)))  # rows still changing
    groups = groups if groups is not None else list(range(len(tokens)))
    rank_list = ranks.tolist() if ranks is not None else [0] * len(tokens)
    passes = 0
    for _ in range(steps):
        if not active:
            break
        passes += 1
        first: dict[tuple, int] = {}  # (sentence, rank, output) -> the row that computes it
        for row in active:
            first.setdefault((groups[row], rank_list[row], tuple(tokens[row])), row)
        unique = list(first.values())
        index = torch.tensor(unique, device=source.valid.device)
        sub = source.select(index)
        y = pad_tokens([tokens[i] for i in unique], source.valid.device)  # (b, Ly)
        z = model.posterior(sub, y).mean  # (b, Lx, D)
        sub_ranks = None if ranks is None else ranks[index]
        new_tokens, new_scores = decode_latent(model, sub, z, sub_ranks)
        result = dict(zip(unique, zip(new_tokens, new_scores, strict=True), strict=True))
        still = []
        for row in active:
            new, score = result[first[groups[row], rank_list[row], tuple(tokens[row])]]
            key = tuple(new)
            if key not in seen[row]:
                still.append(row)
                seen[row].add(key)
            tokens[row], scores[row] = list(new), score
        active = still
    return tokens, scores, passes


def length_beam(b: int, lengths: int, device) -> tuple[Tensor | None, Tensor]:
    """Rows for a length beam of width `lengths` over b rows: (ranks (b*N,) or None where
    N = 1, and the row each comes from (b*N,))."""
    rows = torch.arange(b, device=device).repeat_interleave(lengths)
    if lengths == 1:
        return None, rows
    return torch.arange(lengths, device=device).repeat(b), rows


def best_of(tokens: list, scores: list[float], n: int) -> list[Output]:
    """The best-scoring of each consecutive group of n candidates, the others as candidates."""
    outputs = []
    for i in range(0, len(tokens), n):
        group = list(zip(tokens[i : i + n], scores[i : i + n], strict=True))
        order = sorted(range(n), key=lambda k: -group[k][1])  # ties: the more likely length
        t, s = group[order[0]]
        cands = [group[k] for k in order] if n > 1 else []
        outputs.append(Output(list(t), s, cands))
    return outputs


LENGTHS_OPTION = Option(
    "lengths",
    int,
    1,
    "length beam: try the N most likely lengths, keep the best",
    minimum=1,
    maximum=MAX_LENGTHS,
)
QUANTIZE_OPTION = Option(
    "quantize",
    str,
    "auto",
    "NAT model's Linear layers on the CPU: none (float32), int8, bf16, or auto "
    "(bf16 on CPUs that multiply bfloat16 natively, AVX512-BF16 or AMX; else none)",
)
QUANTIZE = ("auto", "none", "int8", "bf16")


class NATDecoder(Decoder):
    """Shared by the LaNMT decoders: the check of `quantize`.

    On the CPU they decode with their own inference copy of the model (`quantize`: float32
    with pre-packed weights, int8 or bf16; `auto` picks one for this CPU), made when the
    decoder is: a model that is still training gets a fresh copy with each new decoder. On a
    GPU they use the model itself. `compute_type` says what the Linear layers compute in.
    """

    compute_type: str  # float32, int8 or bf16 on a CPU; the model's dtype on a GPU

    def __init__(self, model, teacher=None, **options):
        super().__init__(model, teacher, **options)
        kind = self.options.get("quantize", "none")
        if model is None:
            return
        if next(model.parameters()).device.type == "cpu":
            from lanmt_cli.quantize import cpu_inference_copy, resolve_quantize

            kind = resolve_quantize(kind)
            self.model = cpu_inference_copy(model, kind)
            self.compute_type = "float32" if kind == "none" else kind
        elif kind in ("auto", "none"):
            from lanmt_cli.quantize import dtype_name

            self.compute_type = dtype_name(model)
        else:
            raise OptionError(f"option quantize={kind} of decoder {self.name} runs on a CPU only")

    @classmethod
    def check_options(cls, options):
        checked = super().check_options(options)
        where = f"of decoder {cls.name}"
        if checked.get("quantize", "none") not in QUANTIZE:
            raise OptionError(
                f"option quantize {where} takes one of {', '.join(QUANTIZE)}, "
                f"got {checked['quantize']!r}"
            )
        return checked


class Refine(NATDecoder):
    name = "refine"
    help = "One-shot, then N deterministic refinement steps with the posterior mean."
    option_specs = (
        Option(
            "steps",
            int,
            1,
            "refinement steps (stops early once its output repeats)",
            minimum=0,
            maximum=MAX_STEPS,
        ),
        LENGTHS_OPTION,
        QUANTIZE_OPTION,
    )
    numbered_option = "steps"

    @torch.no_grad()
    def decode(self, src: Tensor, seeds: list[int] | None = None) -> list[Output]:
        m, n = self.model, self.options["lengths"]
        source = m.encode_source(src)
        z = m.prior(source).mean  # (B, Lx, D)
        ranks, rows = length_beam(src.size(0), n, src.device)
        if n > 1:
            source, z = source.select(rows), z[rows]
        tokens, scores = decode_latent(m, source, z, ranks)
        groups = rows.tolist()
        tokens, scores, _ = refine(m, source, tokens, scores, self.options["steps"], ranks, groups)
        return best_of(tokens, scores, n)
