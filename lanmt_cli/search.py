"""Greedy and beam search for the autoregressive teacher, built from its steps."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lanmt_cli.config import BOS, EOS, PAD
from lanmt_cli.teacher import Transformer


@dataclass
class Hypothesis:
    tokens: list[int]  # without BOS/EOS
    score: float  # log-probability, EOS included
    normalized: float  # score / length ** length_penalty (what beam search ranks by)


def max_lengths(src: Tensor, model: Transformer, a: float, b: int) -> Tensor:
    """Output length limit per sentence: a * Lx + b, capped by the model's max_len."""
    lx = (src != PAD).sum(1)
    return (lx.float() * a + b).long().clamp(max=model.config.max_len)


@torch.no_grad()
def beam_search(
    model: Transformer,
    src: Tensor,  # (B, Lx)
    beam: int = 3,
    length_penalty: float = 1.0,
    max_len_a: float = 1.5,
    max_len_b: int = 10,
    nbest: int = 1,
) -> list[list[Hypothesis]]:
    """Batched beam search; returns up to `beam` hypotheses per sentence, best first.

    A sentence ends once `beam` hypotheses have ended. Without length normalization
    (length_penalty=0) it goes on until the best candidate of a step ends and `nbest`
    hypotheses have ended, since no hypothesis still growing can then score better: the rule
    CTranslate2 follows, so that both runtimes find the same translations. Finished
    sentences leave the batch, so a batch costs what its longest member needs. With beam=1
    this is exactly greedy search.
    """
    bsz, k = src.size(0), beam
    limits = max_lengths(src, model, max_len_a, max_len_b)  # (B,)
    memory = model.encode(src)
    rows = torch.arange(bsz, device=src.device).repeat_interleave(k)  # (B*K,)
    state = model.start(memory.select(rows))
    scores = torch.full((bsz, k), float("-inf"), device=src.device)
    scores[:, 0] = 0.0  # only the first beam is live at the start
    tokens = torch.full((bsz * k, 1), BOS, dtype=torch.long, device=src.device)
    active = list(range(bsz))  # sentence id of each live row block
    finished: list[list[Hypothesis]] = [[] for _ in range(bsz)]
    exhaustive = length_penalty == 0  # raw scores: run until the best candidate ends
    best_ended = [False] * bsz

    def done(sent: int) -> bool:
        if exhaustive:
            return best_ended[sent] and len(finished[sent]) >= min(nbest, k)
        return len(finished[sent]) >= k

    for t in range(int(limits.max()) + 1):
        logp = model.step(state, tokens[:, -1])  # (n*K, V)
        n, vocab = len(active), logp.size(-1)
        at_limit = limits[active] <= t  # (n,) must end now
        logp[:, PAD] = float("-inf")
        logp[:, BOS] = float("-inf")
        forced = at_limit.repeat_interleave(k)
        if forced.any():
            eos_only = torch.full_like(logp[0], float("-inf"))
            eos_only[EOS] = 0.0
            logp[forced] = logp[forced, EOS : EOS + 1] + eos_only
        cand = (scores.view(-1, 1) + logp).view(n, k * vocab)
        top, idx = cand.topk(2 * k, dim=1)  # (n, 2K)
        src_beam, tok = idx // vocab, idx % vocab
        # Hypotheses ending here (EOS among the best K candidates) are finalized.
        length = t + 1  # tokens scored so far, EOS included
        is_eos = tok == EOS
        for i, j in (is_eos[:, :k] & (top[:, :k] > float("-inf"))).nonzero().tolist():
            sent = active[i]
            best_ended[sent] |= j == 0
            if exhaustive or len(finished[sent]) < k:
                row = i * k + int(src_beam[i, j])
                s = float(top[i, j])
                finished[sent].append(
                    Hypothesis(tokens[row, 1:].tolist(), s, s / length**length_penalty)
                )
        # The best K candidates that do not end continue.
        cont = top.masked_fill(is_eos, float("-inf"))
        cont_top, order = cont.topk(k, dim=1)  # (n, K)
        next_beam = src_beam.gather(1, order)
        next_tok = tok.gather(1, order)
        keep = [i for i, s in enumerate(active) if not (at_limit[i] or done(s))]
        if not keep:
            break
        keep_t = torch.tensor(keep, device=src.device)
        rows = (keep_t[:, None] * k + next_beam[keep_t]).view(-1)  # (n'*K,)
        state = state.select(rows)
        tokens = torch.cat([tokens[rows], next_tok[keep_t].view(-1, 1)], dim=1)
        scores = cont_top[keep_t]
        active = [active[i] for i in keep]

    for hyps in finished:
        hyps.sort(key=lambda h: h.normalized, reverse=True)
        del hyps[k:]
    return finished


@torch.no_grad()
def greedy_search(
    model: Transformer, src: Tensor, max_len_a: float = 1.5, max_len_b: int = 10
) -> list[list[int]]:
    """Argmax decoding with the key/value cache; one token per step for every sentence."""
    bsz = src.size(0)
    limits = max_lengths(src, model, max_len_a, max_len_b)
    state = model.start(model.encode(src))
    last = torch.full((bsz,), BOS, dtype=torch.long, device=src.device)
    out: list[list[int]] = [[] for _ in range(bsz)]
    done = torch.zeros(bsz, dtype=torch.bool, device=src.device)
    for t in range(int(limits.max()) + 1):
        logp = model.step(state, last)
        logp[:, PAD] = float("-inf")
        logp[:, BOS] = float("-inf")
        last = logp.argmax(-1)
        last = torch.where(limits <= t, torch.full_like(last, EOS), last)
        for i in (~done & (last != EOS)).nonzero().flatten().tolist():
            out[i].append(int(last[i]))
        done |= last == EOS
        if done.all():
            break
    return out
