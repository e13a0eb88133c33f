"""LaNMT: latent-variable non-autoregressive translation (Shu, Lee, Nakayama, Cho; AAAI 2020).

The model exposes the small steps the decoders are built from (see `decoders/`):
`encode_source`, `prior`, `posterior`, `predict_length`, `best_tokens`, and the two passes
most decoding is made of, `decode_prior` (one-shot) and `decode_posterior` (a refinement
step), which a runtime may run as one call each; search stays outside.
Spec: shared/docs/LANMT.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lanmt_cli import metrics as metric
from lanmt_cli.config import PAD, LaNMTConfig
from lanmt_cli.layers import Embedding, Stack, key_mask, sinusoid, smoothed_nll


@dataclass
class Source:
    """An encoded source batch."""

    embedded: Tensor  # (B, Lx, H) token + position embeddings (the posterior's queries)
    states: Tensor  # (B, Lx, H) prior encoder states (the decoder's cross-attention memory)
    valid: Tensor  # (B, Lx) bool

    @property
    def lengths(self) -> Tensor:
        return self.valid.sum(1)  # (B,)

    def select(self, index: Tensor) -> Source:
        return Source(*(t.index_select(0, index) for t in (self.embedded, self.states, self.valid)))


@dataclass
class Decoded:
    """Argmax tokens at the most likely length: what one pass of the decoder gives."""

    lengths: Tensor  # (B,)
    tokens: Tensor  # (B, Ly) PAD beyond each length
    logps: Tensor  # (B, Ly) each token's log-probability, 0 beyond each length


@dataclass
class Gaussian:
    """A diagonal Gaussian per source token: mean and std (B, Lx, D)."""

    mean: Tensor
    std: Tensor

    def sample(self, scale: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device)
        return self.mean + scale * self.std * eps.to(self.mean.dtype)


def gaussian_kl(q: Gaussian, p: Gaussian) -> Tensor:
    """KL(q || p) summed over the D latent dims: (B, Lx, D) -> (B, Lx)."""
    var_ratio = (q.std / p.std) ** 2
    mean_term = ((q.mean - p.mean) / p.std) ** 2
    return 0.5 * (var_ratio + mean_term - 1.0 - var_ratio.log()).sum(-1)


# Both latent heads start as the same near-standard Gaussian, whatever the states: KL starts
# near 0 instead of spiking (a spike inflates sigma and teaches the decoder to ignore z).
LATENT_INIT_STD = 1.0
LATENT_INIT_WEIGHT = 0.01


@torch.no_grad()
def init_latent_head(head: nn.Linear) -> None:
    """Small weights, mean bias 0, std bias so that softplus(bias) = LATENT_INIT_STD."""
    d = head.out_features // 2
    head.weight.normal_(0.0, LATENT_INIT_WEIGHT)
    head.bias[:d].zero_()
    head.bias[d:].fill_(math.log(math.expm1(LATENT_INIT_STD)))


def length_weights(x_valid: Tensor, y_lengths: Tensor, ly: int, sigma: Tensor) -> Tensor:
    """Gaussian length transformation weights (B, Ly, Lx).

    Target position j attends to source position k with weight
    softmax_k(-(k - j * Lx / Ly)^2 / (2 sigma^2)) over the valid source positions only.
    """
    lx = x_valid.sum(1, keepdim=True).float()  # (B, 1)
    j = torch.arange(ly, device=x_valid.device).float()[None, :]  # (1, Ly)
    centres = j * lx / y_lengths[:, None].float().clamp(min=1)  # (B, Ly)
    k = torch.arange(x_valid.size(1), device=x_valid.device).float()  # (Lx,)
    logits = -((k[None, None, :] - centres[:, :, None]) ** 2) / (2 * sigma**2)  # (B, Ly, Lx)
    logits = logits.masked_fill(~x_valid[:, None, :], float("-inf"))
    return logits.softmax(-1)


# Target positions projected to the vocabulary at once when decoding: 512 x V logits stay in
# cache for the softmax (one-shot batched, 2 CPU threads: the projection and scoring 20% faster
# than all positions at once).
PROJECT_CHUNK = 512


class LaNMT(nn.Module):
    def __init__(self, config: LaNMTConfig):
        super().__init__()
        c = self.config = config
        h, d = c.hidden, c.latent_dim
        self.x_embed = Embedding(c.src_vocab, h, c.dropout)
        self.y_embed = Embedding(c.tgt_vocab, h, c.dropout)
        # p(z|x)
        self.prior_encoder = Stack(c.prior_layers, h, c.heads, c.ffn, c.dropout, cross=False)
        self.prior_head = nn.Linear(h, 2 * d)
        # q(z|x,y)
        self.y_encoder = Stack(c.posterior_layers, h, c.heads, c.ffn, c.dropout, cross=False)
        self.posterior_cross = Stack(
            c.posterior_cross_layers, h, c.heads, c.ffn, c.dropout, cross=True
        )
        self.posterior_head = nn.Linear(h, 2 * d)
        for head in (self.prior_head, self.posterior_head):
            init_latent_head(head)
        # z (D) -> H, used everywhere z enters the network
        self.latent_proj = nn.Linear(d, h)
        # p(Ly - Lx | z, x)
        self.length_head = nn.Linear(h, 2 * c.length_window)
        # p(y | z, x)
        self.length_sigma = nn.Parameter(torch.ones(1))
        self.length_embed = nn.Embedding(c.max_len + 1, h)
        self.decoder = Stack(c.decoder_layers, h, c.heads, c.ffn, c.dropout, cross=True)
        self.project = nn.Linear(h, c.tgt_vocab)

    # -- steps ---------------------------------------------------------------
    def encode_source(self, src: Tensor) -> Source:
        """src (B, Lx) -> embeddings and prior states."""
        valid = src != PAD
        embedded = self.x_embed(src)
        states = self.prior_encoder(embedded, key_mask(valid))
        return Source(embedded, states, valid)

    @staticmethod
    def _gaussian(head: nn.Linear, states: Tensor) -> Gaussian:
        mean, raw = head(states).chunk(2, dim=-1)  # (B, Lx, D) each
        return Gaussian(mean, F.softplus(raw) + 1e-4)

    def prior(self, source: Source) -> Gaussian:
        """p(z|x): (B, Lx, D) mean and std."""
        return self._gaussian(self.prior_head, source.states)

    def posterior(self, source: Source, tgt: Tensor) -> Gaussian:
        """q(z|x,y) for target tokens tgt (B, Ly): source-embedding queries attend to encoded y."""
        y_valid = tgt != PAD
        y_states = self.y_encoder(self.y_embed(tgt), key_mask(y_valid))
        h = self.posterior_cross(
            source.embedded, key_mask(source.valid), y_states, key_mask(y_valid)
        )
        return self._gaussian(self.posterior_head, h)

    def length_logits(self, source: Source, z: Tensor) -> Tensor:
        """Scores of Ly - Lx + W over 2W classes from the mean of (proj(z) + prior states)."""
        h = self.latent_proj(z) + source.states  # (B, Lx, H)
        mask = source.valid.unsqueeze(-1).to(h.dtype)
        pooled = (h * mask).sum(1) / mask.sum(1).clamp(min=1)  # (B, H)
        return self.length_head(pooled)  # (B, 2W)

    def predict_length(self, source: Source, z: Tensor) -> Tensor:
        """Most likely target length per sentence (B,), at least 1 and at most max_len."""
        delta = self.length_logits(source, z).argmax(-1) - self.config.length_window
        return (source.lengths + delta).clamp(1, self.config.max_len)

    def decode(self, source: Source, z: Tensor, lengths: Tensor) -> Tensor:
        """Logits (B, Ly, V) for every target position at once, Ly = max(lengths)."""
        return self.project(self.decoder_states(source, z, lengths))

    def decoder_states(
        self, source: Source, z: Tensor, lengths: Tensor, ly: int | None = None
    ) -> Tensor:
        """Final decoder states (B, Ly, H) for every target position, Ly = max(lengths) unless
        given (an exported graph takes it from an input's shape)."""
        ly = int(lengths.max()) if ly is None else ly
        w = length_weights(source.valid, lengths, ly, self.length_sigma)  # (B, Ly, Lx)
        h = torch.bmm(w.to(z.dtype), self.latent_proj(z))  # (B, Ly, H)
        pos = sinusoid(torch.arange(ly, device=z.device), h.size(-1)).to(h.dtype)
        h = h * 0.5**0.5 + 0.5 * pos + 0.5 * self.length_embed(lengths)[:, None, :]
        y_valid = torch.arange(ly, device=z.device)[None, :] < lengths[:, None]  # (B, Ly)
        return self.decoder(h, key_mask(y_valid), source.states, key_mask(source.valid), skip=True)

    def best_tokens(
        self, source: Source, z: Tensor, lengths: Tensor, chunk: int = PROJECT_CHUNK
    ) -> tuple[Tensor, Tensor]:
        """The most likely token at each target position and its log-probability.

        -> tokens (B, Ly) with PAD beyond each length, log-probabilities (B, Ly) with 0 there.
        Only positions within the lengths reach the vocabulary projection, `chunk` of them
        at a time, so that each block of logits is still in cache for the softmax.
        """
        h = self.decoder_states(source, z, lengths)  # (B, Ly, H)
        valid = torch.arange(h.size(1), device=h.device)[None, :] < lengths[:, None]  # (B, Ly)
        rows = h[valid]  # (N, H)
        best = torch.empty(rows.size(0), device=h.device)  # (N,)
        picked = torch.empty(rows.size(0), dtype=torch.long, device=h.device)  # (N,)
        for k in range(0, rows.size(0), chunk):
            logp = self.project(rows[k : k + chunk]).float().log_softmax(-1)  # (chunk, V)
            torch.max(logp, -1, out=(best[k : k + chunk], picked[k : k + chunk]))
        tokens = torch.full(valid.shape, PAD, dtype=torch.long, device=h.device)
        tokens[valid] = picked
        logps = torch.zeros(valid.shape, device=h.device)
        logps[valid] = best
        return tokens, logps

    def decode_z(self, source: Source, z: Tensor) -> Decoded:
        """The most likely length, then the argmax tokens, from latents z (B, Lx, D)."""
        lengths = self.predict_length(source, z)
        return Decoded(lengths, *self.best_tokens(source, z, lengths))

    def decode_prior(self, src: Tensor) -> tuple[Source, Decoded]:
        """One-shot decoding in one step: encode src (B, Lx), z = the prior mean, decode."""
        source = self.encode_source(src)
        return source, self.decode_z(source, self.prior(source).mean)

    def decode_posterior(self, source: Source, tgt: Tensor) -> Decoded:
        """A refinement step in one: z = the posterior mean given tgt (B, Ly), decode."""
        return self.decode_z(source, self.posterior(source, tgt).mean)

    def log_probs(self, source: Source, z: Tensor, lengths: Tensor) -> Tensor:
        """Per-position target log-probabilities (B, Ly, V)."""
        return self.decode(source, z, lengths).float().log_softmax(-1)

    # -- training ------------------------------------------------------------
    def forward(
        self, src: Tensor, tgt: Tensor, kl_budget: float = 1.0
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Negative ELBO with free bits, divided by the target tokens; and metrics.

        Per sentence: -log p(y|z,x) summed over tokens, -log p(Ly|z,x) once, and the clamped
        KL summed over source tokens; the batch's sum is divided by its target tokens.
        """
        c = self.config
        source = self.encode_source(src)
        prior = self.prior(source)
        post = self.posterior(source, tgt)
        z = post.sample() if self.training else post.mean  # (B, Lx, D)

        # KL per source token, clamped from below by the budget (free bits)
        kl = gaussian_kl(post, prior) * source.valid  # (B, Lx)
        kl_used = torch.clamp(kl, min=kl_budget) * source.valid

        # length of the target relative to the source
        y_valid = tgt != PAD
        y_len = y_valid.sum(1)
        len_target = (y_len - source.lengths).clamp(-c.length_window, c.length_window - 1)
        len_target = len_target + c.length_window
        len_logits = self.length_logits(source, z)
        len_loss_sum = F.cross_entropy(len_logits.float(), len_target, reduction="sum")
        len_acc = (len_logits.argmax(-1) == len_target).float().mean()

        # reconstruction, every target position at once given the true length
        logits = self.decode(source, z, y_len)
        ntok = y_valid.sum()
        loss_sum, nll_sum = smoothed_nll(logits, tgt, y_valid, c.label_smoothing)
        correct = ((logits.argmax(-1) == tgt) & y_valid).sum()

        loss = (loss_sum + len_loss_sum + kl_used.sum()) / ntok
        nsrc = source.valid.sum()
        metrics = {
            metric.LOSS: loss.detach(),
            metric.NLL: nll_sum.detach() / ntok,
            metric.WORD_ACC: correct.float() / ntok,
            metric.LEN_LOSS: len_loss_sum.detach() / src.size(0),
            metric.LEN_ACC: len_acc,
            metric.KL_BUDGET: torch.tensor(float(kl_budget)),
            metric.KL: kl.sum().detach() / src.size(0),  # per sentence
            metric.TOK_KL: kl.sum().detach() / nsrc,  # per source token
            metric.PRIOR_SIGMA: (prior.std.mean(-1) * source.valid).sum().detach() / nsrc,
            metric.POST_SIGMA: (post.std.mean(-1) * source.valid).sum().detach() / nsrc,
            metric.NTOKENS: ntok.float(),
        }
        return loss, metrics


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["LaNMT", "Source", "Decoded", "Gaussian", "gaussian_kl", "length_weights"]
