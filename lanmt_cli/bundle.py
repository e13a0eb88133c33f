"""The model bundle: one directory a model lives in.

    DIR/config.json        format version, model config, tokenizer files, languages, teacher
    DIR/model.safetensors  the weights (no pickle anywhere)
    DIR/spm.model          joint SentencePiece model, or src.model + tgt.model
    DIR/teacher/           LaNMT only: the bundle of its autoregressive teacher

Tokenizer files are named relative to the bundle. A teacher inside a LaNMT bundle may name
the outer bundle's file (`../spm.model`), so the shipped model stores it once.

`save_bundle` writes into a temporary folder and renames it into place; `load_bundle`
checks files, format version and shapes, and says clearly what is wrong.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from lanmt_cli.config import LaNMTConfig, TransformerConfig, config_from_dict, config_to_dict
from lanmt_cli.errors import LanmtError
from lanmt_cli.textio import atomic_dir

if TYPE_CHECKING:
    from lanmt_cli.model import LaNMT
    from lanmt_cli.teacher import Transformer
    from lanmt_cli.tokenizer import Tokenizer

BUNDLE_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
SIDES = ("src", "tgt")
DTYPES = ("float32", "float16", "bfloat16")  # how the weights may be stored


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
    if version != BUNDLE_VERSION:
        raise LanmtError(
            f"{cfg_file}: unknown format version {version!r} (this lanmt reads {BUNDLE_VERSION})"
        )
    for key in ("model", "tokenizer"):
        if key not in meta:
            raise LanmtError(f"{cfg_file}: missing field {key!r}")
    try:
        config_from_dict(meta["model"])
    except (ValueError, TypeError) as err:
        raise LanmtError(f"{cfg_file}: {err}") from None
    for key in ("languages", "info"):
        if not isinstance(meta.get(key) or {}, dict):
            raise LanmtError(f"{cfg_file}: field {key} must be a JSON object")
    if meta.get("dtype", "float32") not in DTYPES:
        raise LanmtError(
            f"{cfg_file}: field dtype must be one of {', '.join(DTYPES)}, got {meta['dtype']!r:.40}"
        )
    if meta.get("teacher") is not None:
        name = inside_path(meta["teacher"], "teacher", cfg_file)
        if Path(os.path.normpath(path / name)) == Path(os.path.normpath(path)):
            raise LanmtError(
                f"{cfg_file}: field teacher must name a folder inside the bundle, not {name!r} "
                "(the bundle itself)"
            )
        _check_inside(path, name)
    if not (path / WEIGHTS_FILE).is_file():
        raise LanmtError(f"{path}: missing file {WEIGHTS_FILE}")
    _check_inside(path, WEIGHTS_FILE)
    tokenizer_files(path, meta)  # inside the bundle (a teacher may share the outer one's)
    return meta


def _check_inside(path: Path, name: str) -> None:
    """What the bundle at `path` holds as `name` must stay inside it, links followed."""
    root, target = path.resolve(), (path / name).resolve()
    if not target.is_relative_to(root):
        raise LanmtError(f"{path}: {name} lies outside the bundle (a link to {target})")


def _outer_lanmt(path: Path) -> Path | None:
    """The LaNMT bundle that holds the (resolved) bundle `path` as its teacher, if any."""
    outer = path.parent
    try:
        meta = json.loads((outer / CONFIG_FILE).read_text())
        kind, teacher = meta["model"]["kind"], meta["teacher"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if kind == "lanmt" and isinstance(teacher, str) and (outer / teacher).resolve() == path:
        return outer
    return None


def tokenizer_files(path: str | Path, meta: dict) -> dict[str, Path]:
    """The tokenizer file of each side ("src", "tgt"), checked to exist where it may.

    A file lies inside the bundle; only a teacher embedded in a LaNMT bundle may name one
    of the outer bundle (e.g. `../spm.model`), and it must stay inside that bundle.
    """
    path = Path(path).resolve()
    names = meta["tokenizer"]
    if not isinstance(names, dict) or not all(isinstance(names.get(k), str) for k in SIDES):
        raise LanmtError(f"{path / CONFIG_FILE}: 'tokenizer' must name a 'src' and a 'tgt' file")
    files = {}
    for side in SIDES:
        name = names[side]
        file = Path(os.path.normpath(path / name))
        root = path if file.is_relative_to(path) else _outer_lanmt(path)
        if PurePosixPath(name).is_absolute() or "\\" in name or root is None:
            raise LanmtError(
                f"{path / CONFIG_FILE}: field tokenizer.{side} must name a file inside the bundle "
                f"folder: {name!r} lies outside the bundle (only a teacher inside a LaNMT bundle "
                "may share the outer bundle's file, as '../NAME')"
            )
        if not file.is_relative_to(root) or not file.resolve().is_relative_to(root):
            raise LanmtError(f"{path}: tokenizer file {name!r} lies outside the LaNMT bundle")
        if not file.is_file():
            raise LanmtError(f"{path}: missing file {name}")
        files[side] = file
    return files


def standalone_config(path: str | Path) -> tuple[dict, dict[str, Path]]:
    """A bundle's config as it reads on its own, and its tokenizer files by their names there.

    A teacher that shares its outer bundle's tokenizer gets a file of its own, named as the
    shared one (`../spm.model` becomes `spm.model`).
    """
    path = Path(path).resolve()
    meta = read_config(path)
    files = tokenizer_files(path, meta)
    names = {
        side: meta["tokenizer"][side] if file.is_relative_to(path) else file.name
        for side, file in files.items()
    }
    for side, name in names.items():
        if name != meta["tokenizer"][side] and (path / name).exists():
            raise LanmtError(f"{path}: {name} would hide the shared tokenizer file of that name")
    return {**meta, "tokenizer": names}, {names[side]: files[side] for side in SIDES}


@dataclass
class Bundle:
    """A loaded model with its tokenizer and, for LaNMT, the place of its teacher."""

    path: Path
    meta: dict
    config: LaNMTConfig | TransformerConfig
    model: LaNMT | Transformer  # as `config.kind` says; `teacher()` is the teacher's bundle
    tokenizer: Tokenizer
    device: str = "cpu"
    _teacher: Bundle | None = field(default=None, repr=False)
    _runtimes: dict = field(default_factory=dict, repr=False)

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
            teacher = load_bundle(self.teacher_path, device=self.device)
            if teacher.kind != "transformer":
                raise LanmtError(
                    f"{self.path}: its teacher is a {teacher.kind} model, not a Transformer"
                )
            self._teacher = teacher
        return self._teacher

    def nat_runtime(self, runtime: str = "auto", compute_type: str = "auto", threads: int = 1):
        """The LaNMT model's `lanmt_cli.runtime.NATRuntime`, built once per engine, type and
        thread count: every decoder of a loaded model shares it."""
        from lanmt_cli import runtime as nat

        key = (*nat.resolve(self.model, runtime, compute_type), threads)
        if key not in self._runtimes:
            self._runtimes[key] = nat.build(self.model, runtime, compute_type, threads)
        return self._runtimes[key]


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
    share_tokenizer: bool = False,
) -> Path:
    """Write a bundle; `teacher` (a bundle directory) is copied in as `teacher/`.

    With `share_tokenizer`, the teacher names the bundle's tokenizer files (`../spm.model`)
    where they are identical to its own, so they are stored once.
    """
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
            "format_version": BUNDLE_VERSION,
            "model": config_to_dict(model.config),
            "tokenizer": {"src": tok_files[0], "tgt": tok_files[-1]},
            "languages": languages or {},
            "dtype": "float16" if half else "float32",
            "teacher": None,
            "info": info or {},
        }
        if teacher is not None and model.config.kind == "lanmt":
            _embed_teacher(Path(teacher), tmp / "teacher", tmp if share_tokenizer else None)
            meta["teacher"] = "teacher"
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def _embed_teacher(src: Path, dest: Path, outer: Path | None) -> None:
    """Copy the teacher bundle `src` to `dest` with tokenizer files of its own, or naming
    each file of the bundle `outer` that is identical to its own."""
    given = read_config(src)["tokenizer"]
    meta, files = standalone_config(src)
    shutil.copytree(src, dest)
    names = dict(meta["tokenizer"])
    for name, file in files.items():
        if not (dest / name).is_file():  # it shared its former outer bundle's file
            shutil.copyfile(file, dest / name)
        mine, theirs = dest / name, None if outer is None or "/" in name else outer / name
        if theirs is not None and theirs.is_file() and theirs.read_bytes() == mine.read_bytes():
            mine.unlink()
            names = {side: f"../{n}" if n == name else n for side, n in names.items()}
    if names != given:
        (dest / CONFIG_FILE).write_text(json.dumps({**meta, "tokenizer": names}, indent=2) + "\n")


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


def check_weights(config, file: Path) -> None:
    """Check that `file` holds the weights `config` asks for, from the file's header and a
    model on the meta device: a config that does not fit fails before memory is taken."""
    import torch
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), "pt") as f:
            stored = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as err:
        raise LanmtError(f"{file}: cannot read weights ({err})") from None
    with torch.device("meta"):
        model = build_model(config)
    same: dict[int, list[str]] = {}  # tied weights are one tensor, stored under one name
    for name, t in model.named_parameters(remove_duplicate=False):
        same.setdefault(id(t), []).append(name)
    names = {name: names for names in same.values() for name in names}
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    missing = [n for n in expected if not any(m in stored for m in names.get(n, [n]))]
    unexpected = [n for n in stored if n not in expected]
    if missing or unexpected:
        raise LanmtError(
            f"{file}: weights do not fit the config (missing: {', '.join(missing[:3]) or '-'}; "
            f"unexpected: {', '.join(unexpected[:3]) or '-'})"
        )
    for name, shape in stored.items():
        if shape != expected[name]:
            raise LanmtError(f"{file}: {name} has shape {shape}, the config needs {expected[name]}")


def load_bundle(path: str | Path, device: str = "cpu") -> Bundle:
    """Load a bundle for inference (eval mode, float32 weights on `device`)."""
    from lanmt_cli.tokenizer import Tokenizer

    path = Path(path).resolve()
    meta = read_config(path)
    config = config_from_dict(meta["model"])
    check_weights(config, path / WEIGHTS_FILE)
    model = build_model(config)
    load_weights(model, path / WEIGHTS_FILE)
    model.to(device).eval()
    model.bundle_dir = path  # where a runtime finds files converted from it (lanmt_cli.ct2)
    files = tokenizer_files(path, meta)
    src, tgt = files["src"], files["tgt"]
    tokenizer = Tokenizer.load(src, None if src == tgt else tgt)
    if tokenizer.src_vocab_size != config.src_vocab or tokenizer.tgt_vocab_size != config.tgt_vocab:
        raise LanmtError(
            f"{path}: tokenizer vocabularies ({tokenizer.src_vocab_size}, "
            f"{tokenizer.tgt_vocab_size}) do not fit the model "
            f"({config.src_vocab}, {config.tgt_vocab})"
        )
    return Bundle(path, meta, config, model, tokenizer, device)
