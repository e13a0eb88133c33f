"""Transformer building blocks shared by the teacher and LaNMT (pre-norm)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def sinusoid(positions: Tensor, dim: int) -> Tensor:
    """Sinusoidal encodings of integer positions (...,) -> (..., dim)."""
    half = dim // 2
    freq = torch.exp(
        -math.log(10000.0) * torch.arange(half, device=positions.device, dtype=torch.float32) / half
    )
    angles = positions.float().unsqueeze(-1) * freq  # (..., half)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class Embedding(nn.Module):
    """Token embedding scaled by sqrt(H), plus sinusoidal positions."""

    def __init__(self, vocab: int, hidden: int, dropout: float):
        super().__init__()
        self.tokens = nn.Embedding(vocab, hidden)
        nn.init.normal_(self.tokens.weight, std=hidden**-0.5)
        self.scale = math.sqrt(hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, ids: Tensor, offset: int = 0) -> Tensor:
        # ids: (B, L) -> (B, L, H)
        pos = torch.arange(offset, offset + ids.size(1), device=ids.device)
        h = self.tokens(ids) * self.scale + sinusoid(pos, self.tokens.embedding_dim)
        return self.dropout(h)


class Attention(nn.Module):
    """Multi-head attention with an optional key/value cache for incremental decoding."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        assert hidden % heads == 0, "hidden must be divisible by heads"
        self.heads = heads
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, hidden)
        self.dropout = dropout
        # Inference copies only (`fuse`): q, k and v, or k and v, in one matrix product.
        self.qkv: nn.Module | None = None
        self.kv: nn.Module | None = None

    def split(self, x: Tensor, parts: int = 1) -> Tensor:
        # (B, L, parts*H) -> (parts, B, heads, L, H/heads); the parts dim squeezed if 1
        b, n, _ = x.shape
        heads = x.view(b, n, parts, self.heads, -1).permute(2, 0, 3, 1, 4)
        return heads[0] if parts == 1 else heads

    def project_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        if self.kv is not None:
            k, v = self.split(self.kv(memory), 2)
        elif self.qkv is not None:
            _, k, v = self.split(self.qkv(memory), 3)
        else:
            k, v = self.split(self.k(memory)), self.split(self.v(memory))
        return k, v

    @torch.no_grad()
    def fuse(self, self_attention: bool) -> None:
        """For inference: one product for q, k and v (self-attention: the query is the
        memory) or for k and v (cross-attention) instead of three or two. Same weights; a
        sentence's single product costs little more than each of the small ones."""
        parts = (self.q, self.k, self.v) if self_attention else (self.k, self.v)
        fused = nn.Linear(self.out.in_features, len(parts) * self.out.out_features)
        fused.weight.copy_(torch.cat([p.weight for p in parts]))
        fused.bias.copy_(torch.cat([p.bias for p in parts]))
        if self_attention:
            self.qkv = fused
        else:
            self.kv = fused
        self.k = self.v = None  # q stays: a query that is not the memory needs it

    def forward(
        self,
        query: Tensor,  # (B, Lq, H)
        memory: Tensor | None,  # (B, Lk, H); None when kv is given
        mask: Tensor | None,  # bool, True = may attend; broadcastable to (B, 1, Lq, Lk)
        kv: tuple[Tensor, Tensor] | None = None,  # precomputed (B, heads, Lk, H/heads)
    ) -> Tensor:
        if kv is None and self.qkv is not None:  # fused self-attention: memory is query
            q, k, v = self.split(self.qkv(query), 3)
        else:
            q = self.split(self.q(query))
            k, v = kv if kv is not None else self.project_kv(memory)
        p = self.dropout if self.training else 0.0
        h = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        b, _, n, _ = h.shape
        return self.out(h.transpose(1, 2).reshape(b, n, -1))  # (B, Lq, H)


class FeedForward(nn.Module):
    def __init__(self, hidden: int, ffn: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(hidden, ffn), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn, hidden)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Layer(nn.Module):
    """Self-attention, optional cross-attention (its own weights), feed-forward; pre-norm."""

    def __init__(self, hidden: int, heads: int, ffn: int, dropout: float, cross: bool):
        super().__init__()
        self.self_norm = nn.LayerNorm(hidden)
        self.self_attn = Attention(hidden, heads, dropout)
        self.cross_norm = nn.LayerNorm(hidden) if cross else None
        self.cross_attn = Attention(hidden, heads, dropout) if cross else None
        self.ffn_norm = nn.LayerNorm(hidden)
        self.ffn = FeedForward(hidden, ffn, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,  # (B, L, H)
        self_mask: Tensor | None,  # (B, 1, L, L) or (B, 1, 1, L)
        memory: Tensor | None = None,  # (B, Lm, H)
        memory_mask: Tensor | None = None,  # (B, 1, 1, Lm)
        cache: dict | None = None,  # incremental decoding state of this layer
    ) -> Tensor:
        h = self.self_norm(x)
        if cache is not None:  # append this step's keys and values
            k, v = self.self_attn.project_kv(h)
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
            x = x + self.dropout(self.self_attn(h, None, self_mask, kv=(k, v)))
        else:
            x = x + self.dropout(self.self_attn(h, h, self_mask))
        if self.cross_attn is not None:
            h = self.cross_norm(x)
            if cache is not None:
                if "mk" not in cache:
                    cache["mk"], cache["mv"] = self.cross_attn.project_kv(memory)
                kv = (cache["mk"], cache["mv"])
                x = x + self.dropout(self.cross_attn(h, None, memory_mask, kv=kv))
            else:
                x = x + self.dropout(self.cross_attn(h, memory, memory_mask))
        return x + self.dropout(self.ffn(self.ffn_norm(x)))


class Stack(nn.Module):
    """A stack of layers with a final LayerNorm."""

    def __init__(self, n: int, hidden: int, heads: int, ffn: int, dropout: float, cross: bool):
        super().__init__()
        self.layers = nn.ModuleList(Layer(hidden, heads, ffn, dropout, cross) for _ in range(n))
        self.norm = nn.LayerNorm(hidden)

    def forward(self, x, self_mask, memory=None, memory_mask=None, skip: bool = False) -> Tensor:
        """`skip`: LaNMT's scaled skip from the stack input, h = (input + h) / sqrt(2)."""
        inp = x
        for layer in self.layers:
            x = layer(x, self_mask, memory, memory_mask)
            if skip:
                x = (inp + x) * (0.5**0.5)
        return self.norm(x)


def fuse_attention(model: nn.Module) -> nn.Module:
    """For inference: every layer's attention projections fused (`Attention.fuse`), in place."""
    for block in model.modules():
        if isinstance(block, Layer):
            block.self_attn.fuse(self_attention=True)
            if block.cross_attn is not None:
                block.cross_attn.fuse(self_attention=False)
    return model


def key_mask(valid: Tensor) -> Tensor:
    """(B, L) bool valid positions -> (B, 1, 1, L) attention mask."""
    return valid[:, None, None, :]


def causal_mask(valid: Tensor) -> Tensor:
    """(B, L) valid positions -> (B, 1, L, L): attend to valid keys at or before the query."""
    n = valid.size(1)
    tri = torch.ones(n, n, dtype=torch.bool, device=valid.device).tril()
    return tri[None, None] & valid[:, None, None, :]


def smoothed_nll(
    logits: Tensor, target: Tensor, valid: Tensor, eps: float
) -> tuple[Tensor, Tensor]:
    """Sums over valid positions of label-smoothed cross-entropy and of the plain NLL.

    logits (B, L, V), target (B, L), valid (B, L) bool.
    """
    logp = logits.float().log_softmax(-1)  # (B, L, V)
    nll = -logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (B, L)
    smooth = -logp.mean(-1)  # (B, L)
    loss = (1.0 - eps) * nll + eps * smooth
    return (loss * valid).sum(), (nll * valid).sum()
