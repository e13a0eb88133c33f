"""The model bundle: one directory a model lives in.

    DIR/config.json        format version, model config, tokenizer files, languages, teacher
    DIR/model.safetensors  the weights (no pickle anywhere)
    DIR/spm.model          joint SentencePiece model, or src.model + tgt.model
    DIR/teacher/           LaNMT only: the bundle of its autoregressive teacher

`save_bundle` writes into a temporary folder and renames it into place; `load_bundle`
checks files, format version and shapes, and says clearly what is wrong.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from lanmt_cli.config import config_from_dict, config_to_dict
from lanmt_cli.errors import LanmtError
from lanmt_cli.textio import atomic_dir

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def inside_path(value: Any, field: str, cfg_file: Path) -> str:
    """A file or folder name from config.json that must stay inside the bundle folder."""
    if not isinstance(value, str) or not value:
        raise LanmtError(f"{cfg_file}: field {field} must be a file name, got {value!r:.40}")
    pure = PurePosixPath(value.replace("\\", "/"))
    if pure.is_absolute() or ".." in pure.parts or ":" in value:
        raise LanmtError(
            f"{cfg_file}: field {field} must name a file inside the bundle folder, not {value!r}"
        )
    return value


def read_config(path: str | Path) -> dict:
    """Read and check a bundle's config.json (cheap: no torch); errors name the field."""
    path = Path(path)
    cfg_file = path / CONFIG_FILE
    if not path.is_dir():
        raise LanmtError(f"{path}: not a model directory")
    if not cfg_file.is_file():
        raise LanmtError(f"{path}: missing {CONFIG_FILE}; is this a lanmt model bundle?")
    try:
        meta = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise LanmtError(f"{cfg_file}: not valid JSON ({err})") from None
    except OSError as err:
        raise LanmtError(f"{cfg_file}: cannot read ({err.strerror or err})") from None
    if not isinstance(meta, dict):
        raise LanmtError(f"{cfg_file}: must hold a JSON object, not {type(meta).__name__}")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise LanmtError(
            f"{cfg_file}: unknown format version {version!r} (this lanmt reads {FORMAT_VERSION})"
        )
    for key in ("model", "tokenizer"):
        if key not in meta:
            raise LanmtError(f"{cfg_file}: missing field {key!r}")
    try:
        config_from_dict(meta["model"])
    except (ValueError, TypeError) as err:
        raise LanmtError(f"{cfg_file}: {err}") from None
    tokenizer = meta["tokenizer"]
    if not isinstance(tokenizer, dict) or set(tokenizer) != {"src", "tgt"}:
        raise LanmtError(f"{cfg_file}: field tokenizer must be an object with src and tgt files")
    for side, name in tokenizer.items():
        inside_path(name, f"tokenizer.{side}", cfg_file)
    for key in ("languages", "info"):
        if not isinstance(meta.get(key) or {}, dict):
            raise LanmtError(f"{cfg_file}: field {key} must be a JSON object")
    if meta.get("teacher") is not None:
        inside_path(meta["teacher"], "teacher", cfg_file)
    for name in (WEIGHTS_FILE, *set(tokenizer.values())):
        if not (path / name).is_file():
            raise LanmtError(f"{path}: missing file {name}")
    return meta


@dataclass
class Bundle:
    """A loaded model with its tokenizer and, for LaNMT, the place of its teacher."""

    path: Path
    meta: dict
    config: Any
    model: Any  # torch.nn.Module
    tokenizer: Any  # lanmt_cli.tokenizer.Tokenizer
    device: str = "cpu"
    _teacher: Bundle | None = field(default=None, repr=False)

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def teacher_path(self) -> Path | None:
        ref = self.meta.get("teacher")
        if self.kind == "transformer":
            return self.path
        return None if ref is None else (self.path / ref).resolve()

    def teacher(self) -> Bundle | None:
        """The autoregressive teacher (the bundle itself for a Transformer), loaded once."""
        if self.kind == "transformer":
            return self
        if self._teacher is None and self.teacher_path is not None:
            self._teacher = load_bundle(self.teacher_path, device=self.device)
        return self._teacher


def build_model(config):
    """A fresh model for a config."""
    from lanmt_cli.model import LaNMT
    from lanmt_cli.teacher import Transformer

    return {"transformer": Transformer, "lanmt": LaNMT}[config.kind](config)


def save_bundle(
    path: str | Path,
    model,
    tokenizer,
    *,
    teacher: str | Path | None = None,
    languages: dict[str, str] | None = None,
    info: dict | None = None,
    half: bool = False,
) -> Path:
    """Write a bundle; `teacher` (a bundle directory) is copied in as `teacher/`."""
    import torch
    from safetensors.torch import save_file

    path = Path(path).resolve()
    with atomic_dir(path) as tmp:
        state = {}
        seen: set[int] = set()
        for name, tensor in model.state_dict().items():
            if tensor.data_ptr() in seen:  # tied weights are stored once
                continue
            seen.add(tensor.data_ptr())
            t = tensor.detach().cpu()
            if half and t.is_floating_point():
                t = t.to(torch.float16)
            state[name] = t.contiguous()
        save_file(state, str(tmp / WEIGHTS_FILE))
        tokenizer.save(tmp)
        tok_files = tokenizer.files()
        meta = {
            "format_version": FORMAT_VERSION,
            "model": config_to_dict(model.config),
            "tokenizer": {"src": tok_files[0], "tgt": tok_files[-1]},
            "languages": languages or {},
            "dtype": "float16" if half else "float32",
            "teacher": None,
            "info": info or {},
        }
        if teacher is not None and model.config.kind == "lanmt":
            read_config(teacher)
            shutil.copytree(teacher, tmp / "teacher")
            meta["teacher"] = "teacher"
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def load_weights(model, file: Path) -> None:
    """Load safetensors weights into `model`, checking names and shapes against the config."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        saved = load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise LanmtError(f"{file}: cannot read weights ({err})") from None
    expected = model.state_dict()
    tied = {}
    by_ptr: dict[int, str] = {}
    for name, t in expected.items():
        tied[name] = by_ptr.setdefault(t.data_ptr(), name)
    missing = [n for n in expected if n not in saved and tied[n] not in saved]
    unexpected = [n for n in saved if n not in expected]
    if missing or unexpected:
        raise LanmtError(
            f"{file}: weights do not fit the config (missing: {', '.join(missing[:3]) or '-'}; "
            f"unexpected: {', '.join(unexpected[:3]) or '-'})"
        )
    with torch.no_grad():
        for name, target in expected.items():
            t = saved.get(name, saved.get(tied[name]))
            if t.shape != target.shape:
                raise LanmtError(
                    f"{file}: {name} has shape {tuple(t.shape)}, "
                    f"the config needs {tuple(target.shape)}"
                )
            target.copy_(t.to(target.dtype))


def load_bundle(path: str | Path, device: str = "cpu") -> Bundle:
    """Load a bundle for inference (eval mode, float32 weights on `device`)."""
    from lanmt_cli.tokenizer import Tokenizer

    path = Path(path).resolve()
    meta = read_config(path)
    config = config_from_dict(meta["model"])
    model = build_model(config)
    load_weights(model, path / WEIGHTS_FILE)
    model.to(device).eval()
    tok = meta["tokenizer"]
    src, tgt = path / tok["src"], path / tok["tgt"]
    tokenizer = Tokenizer.load(src, None if tok["src"] == tok["tgt"] else tgt)
    if tokenizer.src_vocab_size != config.src_vocab or tokenizer.tgt_vocab_size != config.tgt_vocab:
        raise LanmtError(
            f"{path}: tokenizer vocabularies ({tokenizer.src_vocab_size}, "
            f"{tokenizer.tgt_vocab_size}) do not fit the model "
            f"({config.src_vocab}, {config.tgt_vocab})"
        )
    return Bundle(path, meta, config, model, tokenizer, device)
