"""Typed architecture configs, saved as JSON beside the weights; checked when read."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

PAD, UNK, BOS, EOS = 0, 1, 2, 3
NUM_SPECIAL = 4
MAX_LEN = 4096  # the longest max_len: tables of max_len rows are made from it
MAX_LAYERS = 100  # layers of one stack


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

    def __post_init__(self) -> None:
        check_values(self)


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

    def __post_init__(self) -> None:
        check_values(self)


CONFIGS: dict[str, type] = {"transformer": TransformerConfig, "lanmt": LaNMTConfig}


_TYPE_NAMES = {
    "int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
    "dict": "a JSON object", "tuple": "a list", "list": "a list", "None": "null",
}  # fmt: skip


def _type_ok(value: Any, annotation: str) -> bool:
    """Whether a JSON value fits a field annotation such as `int`, `str | None`, `dict[...]`."""
    for option in (part.strip() for part in annotation.split("|")):
        base = option.split("[", 1)[0]
        if base == "Any" or (base == "None" and value is None):
            return True
        if base == "bool" and isinstance(value, bool):
            return True
        if isinstance(value, bool):  # JSON true is no number
            continue
        if base == "int" and isinstance(value, int):
            return True
        if base == "float" and isinstance(value, (int, float)):
            return True
        if base == "str" and isinstance(value, str):
            return True
        if base == "dict" and isinstance(value, dict):
            return True
        if base in ("tuple", "list") and isinstance(value, (list, tuple)):
            return True
    return False


def check_types(cls: type, data: Any, where: str = "") -> dict:
    """Check a JSON object against the fields of dataclass `cls`; ValueError names the field."""
    prefix = f"{where}." if where else ""
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'the config'} must be a JSON object, got {data!r:.40}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown {where or cls.__name__} fields: {', '.join(unknown)}")
    for name, value in data.items():
        annotation = str(fields[name].type)
        if not _type_ok(value, annotation):
            bases = (part.strip().split("[", 1)[0] for part in annotation.split("|"))
            want = " or ".join(_TYPE_NAMES.get(base, base) for base in bases)
            raise ValueError(f"field {prefix}{name} must be {want}, got {value!r:.40}")
    return data


def _int_range(name: str) -> tuple[int, int | None]:
    """The least and most (None: no limit) an integer field of a model config may be."""
    if name.endswith("_layers"):
        return 0, MAX_LAYERS
    return 1, MAX_LEN if name == "max_len" else None


def check_values(config: Any) -> None:
    """Sizes positive, layer counts in [0, MAX_LAYERS], max_len at most MAX_LEN, rates in
    [0, 1), width divisible by heads."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"field model.{f.name} must be an integer, got {value!r:.40}")
        if f.type == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"field model.{f.name} must be a number, got {value!r:.40}")
        if f.type == "int":
            least, most = _int_range(f.name)
            if value < least:
                raise ValueError(f"field model.{f.name} must be at least {least}, got {value}")
            if most is not None and value > most:
                raise ValueError(f"field model.{f.name} must be at most {most}, got {value}")
        if f.type == "float" and not 0 <= value < 1:
            raise ValueError(f"field model.{f.name} must be in [0, 1), got {value}")
    if config.hidden % config.heads:
        raise ValueError(
            f"the model width (hidden {config.hidden}) must be a multiple of the number of "
            f"attention heads (heads {config.heads})"
        )


def config_to_dict(config: Any) -> dict:
    return {"kind": config.kind, **dataclasses.asdict(config)}


def config_from_dict(data: Any) -> TransformerConfig | LaNMTConfig:
    """Rebuild a config; a wrong kind, field, type or value raises ValueError naming it."""
    if not isinstance(data, dict):
        raise ValueError(f"field model must be a JSON object, got {data!r:.40}")
    data = dict(data)
    kind = data.pop("kind", None)
    if not isinstance(kind, str) or kind not in CONFIGS:
        raise ValueError(f"unknown model kind {kind!r} (known: {', '.join(CONFIGS)})")
    cls = CONFIGS[kind]
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {kind} config fields: {', '.join(unknown)}")
    check_types(cls, data, "model")
    for name in ("src_vocab", "tgt_vocab"):
        if name not in data:
            raise ValueError(f"field model.{name} is missing")
    return cls(**data)
