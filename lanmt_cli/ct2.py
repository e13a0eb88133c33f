"""CTranslate2 as the teacher's runtime: our converter and a small engine around it.

`convert` maps a `lanmt_cli.teacher.Transformer` onto a CTranslate2 `TransformerSpec`
(pre-norm layers with final LayerNorms, embeddings scaled by sqrt(H), our sinusoidal
positions as an explicit table, ReLU feed-forward, fused q/k/v, the output projection tied
to the target embeddings). Token ids travel as their decimal strings ("17"), so the
CTranslate2 vocabulary is the id space itself, with our special ids named as CTranslate2
expects them: PAD "<blank>", UNK "<unk>", BOS "<s>" (the decoder's start token), EOS "</s>".

Where a converted model comes from (`model_dir`): the teacher bundle's own `ctranslate2/`
folder (written by `lanmt pack` and `recipes/ship_default.py`) when its key matches the
weights; else a cache folder (`LANMT_CACHE`, or the platform's user cache), built once,
atomically, and named by the sha256 of the weights. Either is used only while every file
still has the sha256 recorded when it was converted; a cached one that does not is
converted again.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from lanmt_cli import cache
from lanmt_cli.config import BOS, EOS, PAD, UNK
from lanmt_cli.errors import LanmtError

CONVERTER_VERSION = 1  # bump when the mapping changes: old conversions are then rebuilt
FOLDER = "ctranslate2"  # the converted model inside a teacher bundle
KEY_FILE = cache.RECORD  # {"key", "converter", "files": {name: sha256}} beside the model
COMPUTE_TYPES = (
    "default", "auto", "float32", "int8", "int8_float32", "int16", "float16", "bfloat16",
    "int8_float16", "int8_bfloat16",
)  # fmt: skip
BACKENDS = ("ctranslate2", "torch")
_SPECIAL = {PAD: "<blank>", UNK: "<unk>", BOS: "<s>", EOS: "</s>"}


def token_names(vocab: int) -> list[str]:
    """The CTranslate2 vocabulary for ids 0..vocab-1."""
    return [_SPECIAL.get(i, str(i)) for i in range(vocab)]


def weights_key(model) -> str:
    """sha256 of the model's weights (names, shapes, float32 values) and the converter."""
    return cache.weights_key(model, f"lanmt-ct2-{CONVERTER_VERSION}")


def _np(t):
    return t.detach().float().cpu().numpy()


def _linear(spec, *layers) -> None:
    """Set a LinearSpec from one or more nn.Linear stacked along the output dim (fused)."""
    import numpy as np

    spec.weight = np.concatenate([_np(m.weight) for m in layers])
    if layers[0].bias is not None:
        spec.bias = np.concatenate([_np(m.bias) for m in layers])


def _norm(spec, norm) -> None:
    spec.gamma, spec.beta = _np(norm.weight), _np(norm.bias)


def _layer(spec, layer) -> None:
    """One pre-norm layer: self-attention, optional cross-attention, feed-forward."""
    a = layer.self_attn
    _norm(spec.self_attention.layer_norm, layer.self_norm)
    _linear(spec.self_attention.linear[0], a.q, a.k, a.v)
    _linear(spec.self_attention.linear[1], a.out)
    if layer.cross_attn is not None:
        c = layer.cross_attn
        _norm(spec.attention.layer_norm, layer.cross_norm)
        _linear(spec.attention.linear[0], c.q)
        _linear(spec.attention.linear[1], c.k, c.v)
        _linear(spec.attention.linear[2], c.out)
    _norm(spec.ffn.layer_norm, layer.ffn_norm)
    first, _, _, second = layer.ffn.net  # Linear, ReLU, Dropout, Linear
    _linear(spec.ffn.linear_0, first)
    _linear(spec.ffn.linear_1, second)


def _positions(rows: int, dim: int):
    """Our sinusoidal table (rows, dim): CTranslate2's own formula differs slightly."""
    import torch

    from lanmt_cli.layers import sinusoid

    return sinusoid(torch.arange(rows), dim).numpy()


def build_spec(model):
    """The CTranslate2 TransformerSpec of a lanmt Transformer, weights set."""
    from ctranslate2.specs import common_spec, transformer_spec

    c = model.config
    spec = transformer_spec.TransformerSpec.from_config(
        (c.encoder_layers, c.decoder_layers),
        c.heads,
        pre_norm=True,
        activation=common_spec.Activation.RELU,
    )
    enc, dec = spec.encoder, spec.decoder
    table = _positions(c.max_len + 2, c.hidden)  # positions 0..max_len+1 (BOS at 0)
    enc.embeddings[0].weight = _np(model.src_embed.tokens.weight)
    enc.scale_embeddings = True  # times sqrt(H), as lanmt_cli.layers.Embedding
    enc.position_encodings.encodings = table
    dec.embeddings.weight = _np(model.tgt_embed.tokens.weight)
    dec.scale_embeddings = True
    dec.position_encodings.encodings = table
    for layer_spec, layer in zip(enc.layer, model.encoder.layers, strict=True):
        _layer(layer_spec, layer)
    for layer_spec, layer in zip(dec.layer, model.decoder.layers, strict=True):
        _layer(layer_spec, layer)
    _norm(enc.layer_norm, model.encoder.norm)
    _norm(dec.layer_norm, model.decoder.norm)
    _linear(dec.projection, model.project)
    spec.register_source_vocabulary(token_names(c.src_vocab))
    spec.register_target_vocabulary(token_names(c.tgt_vocab))
    spec.config.unk_token, spec.config.bos_token, spec.config.eos_token = (
        _SPECIAL[UNK],
        _SPECIAL[BOS],
        _SPECIAL[EOS],
    )
    spec.config.decoder_start_token = _SPECIAL[BOS]
    spec.config.add_source_bos = spec.config.add_source_eos = False  # our sources have neither
    spec.config.layer_norm_epsilon = model.encoder.norm.eps
    return spec


def _half_is_exact(model) -> bool:
    """Every float weight is exactly representable in float16 (e.g. loaded from a half bundle)."""
    import torch

    return all(
        torch.equal(t.half().float(), t.float())
        for t in model.state_dict().values()
        if t.is_floating_point()
    )


def convert(model, dest: str | Path, key: str | None = None) -> Path:
    """Write the CTranslate2 model of `model` to the folder `dest`, atomically.

    Weights are stored in float16 when that loses nothing, else float32. A folder that
    appears at `dest` meanwhile (another process converting the same weights) is kept.
    """
    from lanmt_cli.textio import atomic_dir

    dest = Path(dest)
    key = key or weights_key(model)
    try:
        with atomic_dir(dest, replace=False) as tmp:
            spec = build_spec(model)
            spec.validate()
            spec.optimize(quantization="float16" if _half_is_exact(model) else None)
            spec.save(str(tmp))
            cache.write_record(tmp, key, converter=CONVERTER_VERSION)
    except LanmtError:
        if not _matches(dest, key):  # not another process' conversion of the same weights
            raise
    return dest


def _matches(folder: Path, key: str) -> bool:
    """Whether `folder` holds the conversion of weights `key`, every file as recorded."""
    return cache.intact(folder, key)


def cache_dir() -> Path:
    """Where converted teachers are kept: `LANMT_CACHE`, else the user cache folder."""
    return cache.cache_dir(FOLDER)


def model_dir(model, bundle_dir: str | Path | None = None) -> Path:
    """The converted model of `model`: the bundle's own if current, else the cache's (built
    there once if missing)."""
    key = weights_key(model)
    if bundle_dir is not None and _matches(Path(bundle_dir) / FOLDER, key):
        return Path(bundle_dir) / FOLDER
    cached = cache_dir() / key[:32]
    if not _matches(cached, key):
        if cached.exists():  # stale or broken: rebuild it
            shutil.rmtree(cached, ignore_errors=True)
        convert(model, cached, key)
    return cached


def _converted(path: Path) -> bool:
    """Whether `path` is a conversion that lanmt makes again when it is missing."""
    return (Path(path) / KEY_FILE).is_file()


def teacher_folder(bundle_dir: str | Path) -> Path | None:
    """The folder of a bundle's autoregressive teacher (the bundle itself for a Transformer);
    None for a LaNMT bundle without one. Reads config.json only."""
    from lanmt_cli.bundle import read_config

    bundle_dir = Path(bundle_dir)
    meta = read_config(bundle_dir)
    if meta["model"].get("kind") == "transformer":
        return bundle_dir
    ref = meta.get("teacher")
    if not ref:
        return None
    if Path(ref).is_absolute() or ".." in Path(ref).parts:
        raise LanmtError(f"{bundle_dir}: the teacher must lie inside the bundle, not at {ref!r}")
    return bundle_dir / ref


def store_in_bundle(teacher_dir: str | Path) -> Path:
    """Add (or refresh) `ctranslate2/` in a teacher bundle folder; returns its path."""
    from lanmt_cli.bundle import load_bundle

    teacher_dir = Path(teacher_dir)
    bundle = load_bundle(teacher_dir)
    if bundle.kind != "transformer":
        raise LanmtError(f"{teacher_dir}: a {bundle.kind} model, not a teacher")
    key = weights_key(bundle.model)
    dest = teacher_dir / FOLDER
    if not _matches(dest, key):
        if dest.exists():
            shutil.rmtree(dest)
        convert(bundle.model, dest, key)
    return dest


# --- running it --------------------------------------------------------------------------


@dataclass
class Hypothesis:
    tokens: list[int]  # without BOS/EOS
    score: float  # log-probability, EOS included when the search ended with it


def _names(ids: list[int]) -> list[str]:
    return [_SPECIAL.get(i, str(i)) for i in ids]


def _ids(names: list[str]) -> list[int]:
    back = {v: k for k, v in _SPECIAL.items()}
    return [back[t] if t in back else int(t) for t in names]


def default_threads() -> int:
    """Threads for CTranslate2: torch's setting (which `--threads` sets)."""
    import torch

    return max(1, torch.get_num_threads())


class Engine:
    """A CTranslate2 translator for one teacher: beam/greedy search and scoring on id lists."""

    def __init__(self, path: Path, compute_type: str = "default", threads: int | None = None):
        import ctranslate2

        if compute_type not in COMPUTE_TYPES:
            raise LanmtError(
                f"unknown compute_type {compute_type!r} (known: {', '.join(COMPUTE_TYPES)})"
            )
        self.path, self.compute_type = path, compute_type
        try:
            self.translator = ctranslate2.Translator(
                str(path),
                device="cpu",
                # "default" keeps the stored type, which on a CPU means float32
                compute_type="float32" if compute_type == "default" else compute_type,
                inter_threads=1,
                intra_threads=threads or default_threads(),
            )
        except (RuntimeError, ValueError) as err:
            hint = f" (delete {path} to have it converted again)" if _converted(path) else ""
            raise LanmtError(
                f"CTranslate2 cannot load {path} as {compute_type}: {err}{hint}"
            ) from None

    def search(
        self,
        sources: list[list[int]],
        limits: list[int],
        beam: int = 3,
        length_penalty: float = 1.0,
        nbest: int = 1,
    ) -> list[list[Hypothesis]]:
        """Beam search (greedy with beam=1) of each source; at most `limits[i]` tokens each.

        The search runs to the longest limit of the batch; a longer output is then cut at
        its own limit (exact for greedy search). Scores are log-probabilities over the whole
        vocabulary, as PyTorch's search reports them; PAD and BOS are not suppressed
        (CTranslate2 would renormalise without them), and a trained teacher never picks them.
        """
        if not sources:
            return []
        results = self.translator.translate_batch(
            [_names(s) for s in sources],
            beam_size=beam,
            num_hypotheses=max(1, min(nbest, beam)),
            length_penalty=length_penalty,
            max_decoding_length=max(1, max(limits)),
            min_decoding_length=0,  # as our search: EOS may come first (1 renormalises)
            max_input_length=0,
            return_scores=True,
        )
        most = max(1, max(limits))
        found = []
        for result, limit in zip(results, limits, strict=True):
            hyps = []
            for names, score in zip(result.hypotheses, result.scores, strict=True):
                tokens = _ids(names)
                # CTranslate2 reports score / length ** length_penalty, EOS counted in length
                scored = len(tokens) + (len(tokens) < most)
                hyps.append(Hypothesis(tokens[:limit], float(score) * scored**length_penalty))
            found.append(hyps)
        return found

    def score(self, sources: list[list[int]], targets: list[list[int]]) -> list[list[float]]:
        """Per-token log-probabilities of each target given its source, EOS included."""
        if not sources:
            return []
        results = self.translator.score_batch(
            [_names(s) for s in sources], [_names(t) for t in targets], max_input_length=0
        )
        return [list(r.log_probs) for r in results]


def engine_for(model, compute_type: str = "default", threads: int | None = None) -> Engine:
    """The engine of a teacher module, made once per compute type and thread count and kept
    on the module; `model.bundle_dir`, where set, names the bundle it was loaded from."""
    threads = threads or default_threads()
    engines = model.__dict__.setdefault("_ct2_engines", {})
    if (compute_type, threads) not in engines:
        path = model_dir(model, getattr(model, "bundle_dir", None))
        engines[compute_type, threads] = Engine(path, compute_type, threads)
    return engines[compute_type, threads]
