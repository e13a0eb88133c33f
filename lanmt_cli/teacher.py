"""The autoregressive Transformer: LaNMT's distillation teacher, rescorer and speed baseline.

Search lives outside the model (see `lanmt_cli.search`); the model exposes the steps:
`encode`, `start` (an empty decoding state), `step` (one token, cached keys/values),
`reorder` (follow the surviving beams) and batched teacher-forced `score`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lanmt_cli import metrics as metric
from lanmt_cli.config import BOS, EOS, PAD, TransformerConfig
from lanmt_cli.layers import Embedding, Stack, causal_mask, key_mask, smoothed_nll


@dataclass
class Memory:
    """Encoded source: states (B, Lx, H) and valid positions (B, Lx)."""

    states: Tensor
    valid: Tensor

    def select(self, index: Tensor) -> Memory:
        return Memory(self.states.index_select(0, index), self.valid.index_select(0, index))


@dataclass
class DecodeState:
    """Incremental decoding state: the memory and one key/value cache per decoder layer."""

    memory: Memory
    caches: list[dict]
    length: int  # tokens fed so far

    def select(self, index: Tensor) -> DecodeState:
        """Keep rows `index` (B',) of every cached tensor (beam reordering, pruning)."""
        caches = [{k: v.index_select(0, index) for k, v in c.items()} for c in self.caches]
        return DecodeState(self.memory.select(index), caches, self.length)


def with_bos(tgt: Tensor) -> tuple[Tensor, Tensor]:
    """tgt (B, Ly) padded -> decoder input [BOS] + y and output y + [EOS], both (B, Ly+1)."""
    b = tgt.size(0)
    valid = tgt != PAD
    lengths = valid.sum(1)  # (B,)
    bos = torch.full((b, 1), BOS, dtype=tgt.dtype, device=tgt.device)
    pad = torch.full((b, 1), PAD, dtype=tgt.dtype, device=tgt.device)
    inp = torch.cat([bos, tgt], dim=1)
    out = torch.cat([tgt, pad], dim=1)
    out[torch.arange(b, device=tgt.device), lengths] = EOS
    return inp, out


class Transformer(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        c = self.config = config
        self.src_embed = Embedding(c.src_vocab, c.hidden, c.dropout)
        self.tgt_embed = Embedding(c.tgt_vocab, c.hidden, c.dropout)
        self.encoder = Stack(c.encoder_layers, c.hidden, c.heads, c.ffn, c.dropout, cross=False)
        self.decoder = Stack(c.decoder_layers, c.hidden, c.heads, c.ffn, c.dropout, cross=True)
        self.project = nn.Linear(c.hidden, c.tgt_vocab, bias=False)
        if c.tie_embeddings:
            self.project.weight = self.tgt_embed.tokens.weight

    # -- steps ---------------------------------------------------------------
    def encode(self, src: Tensor) -> Memory:
        """src (B, Lx) -> Memory with states (B, Lx, H)."""
        valid = src != PAD
        states = self.encoder(self.src_embed(src), key_mask(valid))
        return Memory(states, valid)

    def logits(self, memory: Memory, inp: Tensor) -> Tensor:
        """Teacher-forced decoder: inp (B, L) starting with BOS -> logits (B, L, V)."""
        valid = inp != PAD
        valid[:, 0] = True
        h = self.decoder(
            self.tgt_embed(inp), causal_mask(valid), memory.states, key_mask(memory.valid)
        )
        return self.project(h)

    def start(self, memory: Memory) -> DecodeState:
        return DecodeState(memory, [{} for _ in self.decoder.layers], 0)

    def step(self, state: DecodeState, tokens: Tensor) -> Tensor:
        """Feed one token per row, tokens (B,), return next-token log-probs (B, V)."""
        x = self.tgt_embed(tokens[:, None], offset=state.length)  # (B, 1, H)
        mmask = key_mask(state.memory.valid)
        for layer, cache in zip(self.decoder.layers, state.caches, strict=True):
            x = layer(x, None, state.memory.states, mmask, cache=cache)
        state.length += 1
        h = self.decoder.norm(x[:, 0])  # (B, H)
        return self.project(h).float().log_softmax(-1)

    @torch.no_grad()
    def score(self, src: Tensor, candidates: Tensor, memory: Memory | None = None) -> Tensor:
        """log p(y|x) of each candidate, EOS included: src (B, Lx), candidates (B, Ly) -> (B,).

        One batched forward pass; `memory` may be given (already expanded to B rows).
        """
        memory = memory if memory is not None else self.encode(src)
        inp, out = with_bos(candidates)
        logp = self.logits(memory, inp).float().log_softmax(-1)  # (B, L, V)
        tok = logp.gather(-1, out.unsqueeze(-1)).squeeze(-1)  # (B, L)
        return (tok * (out != PAD)).sum(1)

    # -- training ------------------------------------------------------------
    def forward(self, src: Tensor, tgt: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Label-smoothed loss per target token (EOS included) and metrics."""
        inp, out = with_bos(tgt)
        logits = self.logits(self.encode(src), inp)
        valid = out != PAD
        ntok = valid.sum()
        loss_sum, nll_sum = smoothed_nll(logits, out, valid, self.config.label_smoothing)
        correct = ((logits.argmax(-1) == out) & valid).sum()
        loss = loss_sum / ntok
        metrics = {
            metric.LOSS: loss.detach(),
            metric.NLL: nll_sum.detach() / ntok,
            metric.WORD_ACC: correct.float() / ntok,
            metric.NTOKENS: ntok.float(),
        }
        return loss, metrics
