"""Typed architecture configs, saved as JSON beside the weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

PAD, UNK, BOS, EOS = 0, 1, 2, 3
NUM_SPECIAL = 4


@dataclass
class TransformerConfig:
    """The autoregressive Transformer teacher (encoder-decoder)."""

    src_vocab: int
    tgt_vocab: int
    hidden: int = 256  # model width H
    heads: int = 4
    ffn: int = 1024  # feed-forward width
    encoder_layers: int = 3
    decoder_layers: int = 3
    dropout: float = 0.1
    label_smoothing: float = 0.1
    max_len: int = 256  # longest sequence the model takes (tokens)
    tie_embeddings: bool = True  # decoder input embedding = output projection

    kind = "transformer"


@dataclass
class LaNMTConfig:
    """The latent-variable non-autoregressive model (Shu et al., 2020)."""

    src_vocab: int
    tgt_vocab: int
    hidden: int = 256  # model width H
    latent_dim: int = 8  # D: one D-dim latent per source token
    heads: int = 4
    ffn: int = 1024
    prior_layers: int = 3  # encoder over x giving the prior states
    posterior_layers: int = 1  # encoder over y inside q(z|x,y)
    posterior_cross_layers: int = 2  # x-embedding queries attending to encoded y
    decoder_layers: int = 3  # non-autoregressive decoder
    dropout: float = 0.1
    label_smoothing: float = 0.1
    length_window: int = 50  # predict Ly - Lx in [-W, W-1]
    max_len: int = 256

    kind = "lanmt"


CONFIGS: dict[str, type] = {"transformer": TransformerConfig, "lanmt": LaNMTConfig}


def config_to_dict(config: Any) -> dict:
    return {"kind": config.kind, **dataclasses.asdict(config)}


def config_from_dict(data: dict) -> TransformerConfig | LaNMTConfig:
    """Rebuild a config; unknown kinds or fields raise ValueError with the reason."""
    data = dict(data)
    kind = data.pop("kind", None)
    if kind not in CONFIGS:
        raise ValueError(f"unknown model kind {kind!r} (known: {', '.join(CONFIGS)})")
    cls = CONFIGS[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {kind} config fields: {', '.join(unknown)}")
    return cls(**data)
