"""The teacher's teacher-forced scoring on ONNX Runtime: `teacher-rescore`'s default scorer.

One graph, `score`: source ids `src` (B, Lx) and target ids `tgt` (B, Ly), both PAD-padded
and without BOS/EOS, -> `logp` (B, Ly+1): log p(y_t | y_<t, x) of every target token and then
of EOS at each row's own end (the log-softmax over the whole vocabulary, as
`Transformer.score` and CTranslate2's `score_batch` compute it), 0 beyond. It runs in the
process' one ONNX Runtime thread pool (`onnx_nat.session_options`), the NAT model's, where
CTranslate2 would bring a thread pool of its own.

Compute types: float32 (the exported graph) and int8, rewritten as the NAT model's graphs are
(`onnx_nat.quantize_int8`: one scale per weight column, one fixed scale per input tensor,
calibrated at export on random source and target ids), so that a candidate scores the same in
any batch. Graphs are exported once per weights into the cache (`$LANMT_CACHE/onnx-teacher`),
atomically, every file's sha256 recorded and checked before loading; a damaged file is
exported again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from lanmt_cli import cache, onnx_nat
from lanmt_cli.config import PAD
from lanmt_cli.errors import LanmtError
from lanmt_cli.layers import fuse_attention
from lanmt_cli.teacher import Transformer, with_bos

EXPORT_VERSION = 1  # bump when the graph changes: old exports are then rebuilt
FOLDER = "onnx-teacher"
GRAPH = "score"
# The teacher's compute types in the decoders' (CTranslate2's) names -> the graph that runs them.
COMPUTE_TYPES = {"default": "float32", "float32": "float32", "int8": "int8", "int8_float32": "int8"}


class _Score(nn.Module):
    """src (B, Lx), tgt (B, Ly) -> logp (B, Ly+1): each target token's log-probability, then
    EOS's at the row's end, 0 beyond (as `Transformer.score`, per token)."""

    def __init__(self, model: Transformer):
        super().__init__()
        self.model = model

    def forward(self, src: Tensor, tgt: Tensor) -> Tensor:
        m = self.model
        inp, out = with_bos(tgt)  # (B, Ly+1) each: BOS + y, y + EOS
        logp = m.logits(m.encode(src), inp).log_softmax(-1)  # (B, Ly+1, V)
        tok = logp.gather(-1, out.unsqueeze(-1)).squeeze(-1)  # (B, Ly+1)
        return tok.where(out != PAD, 0.0)


def weights_key(model: nn.Module) -> str:
    """sha256 of the teacher's weights (names, shapes, float32 values) and the exporter."""
    return cache.weights_key(model, f"lanmt-onnx-teacher-{EXPORT_VERSION}")


def graph_file(kind: str) -> str:
    return f"{GRAPH}.{kind}.onnx"


def calibration_feeds(config) -> list[dict[str, np.ndarray]]:
    """Random source and target ids (`onnx_nat.random_ids`), batch by batch."""
    rng = np.random.default_rng(0)
    sources = onnx_nat.random_ids(rng, config.src_vocab, config.max_len)
    targets = onnx_nat.random_ids(rng, config.tgt_vocab, config.max_len)
    return [{"src": s, "tgt": t} for s, t in zip(sources, targets, strict=True)]


def _inference_copy(model: Transformer) -> Transformer:
    """A float32 CPU copy in eval mode with fused attention projections (built from the
    weights, not deep-copied: the module may carry runtimes of its own)."""
    plain = Transformer(model.config)
    plain.load_state_dict(model.state_dict())
    return fuse_attention(plain.float().eval())


def export(model: Transformer, dest: str | Path, key: str | None = None) -> Path:
    """Write the float32 and int8 scoring graphs of `model` to the folder `dest`, atomically."""
    import warnings

    from lanmt_cli.textio import atomic_dir

    dest = Path(dest)
    key = key or weights_key(model)
    plain = _inference_copy(model)
    c = plain.config
    # batch 3, source 7, target 9: no dimension of size 1, which an exporter may take for a constant
    example = (torch.randint(4, c.src_vocab, (3, 7)), torch.randint(4, c.tgt_vocab, (3, 9)))
    try:
        with atomic_dir(dest, replace=False) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on traced shapes
            path = tmp / graph_file("float32")
            axes = {
                "src": {0: "batch", 1: "src_len"},
                "tgt": {0: "batch", 1: "tgt_len"},
                "logp": {0: "batch", 1: "scored"},
            }
            onnx_nat.trace(_Score(plain), example, path, ["src", "tgt"], ["logp"], axes)
            ranges = onnx_nat.activation_ranges(path, calibration_feeds(c))
            onnx_nat.quantize_int8(path, tmp / graph_file("int8"), ranges)
            cache.write_record(tmp, key, exporter=EXPORT_VERSION)
    except LanmtError:  # unless another process exported the same weights meanwhile
        if not cache.intact(dest, key):
            raise
    return dest


def model_dir(model: Transformer, kind: str = "float32") -> Path:
    """The exported graphs of `model`: from the cache, exported there once if missing, and
    exported again if the graph of `kind` is damaged (its checksum differs)."""
    key = weights_key(model)
    return cache.kept(FOLDER, key, [graph_file(kind)], lambda d: export(model, d, key))


def graph_type(compute_type: str) -> str:
    """float32 or int8 for a teacher compute type (COMPUTE_TYPES); one clear error otherwise."""
    if compute_type not in COMPUTE_TYPES:
        raise LanmtError(
            f"ONNX Runtime scores the teacher in {', '.join(COMPUTE_TYPES)} only, "
            f"not {compute_type!r}"
        )
    return COMPUTE_TYPES[compute_type]


class OnnxTeacher:
    """The teacher's teacher-forced scoring on an ONNX Runtime session (float32 or int8)."""

    def __init__(self, model: Transformer, compute_type: str = "float32", threads: int = 1):
        """threads: the size of the process' ONNX Runtime thread pool, if this is the first
        session of the process."""
        import onnxruntime as ort

        self.compute_type = graph_type(compute_type)
        options = onnx_nat.session_options(threads)  # before an export's calibration makes it
        path = model_dir(model, self.compute_type) / graph_file(self.compute_type)
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as err:  # ONNX Runtime's own errors have no common base class
            raise LanmtError(
                f"ONNX Runtime cannot load {path}: {str(err).splitlines()[0]}"
            ) from None

    def score(self, src: Tensor, rows: list[int], ys: list[list[int]]) -> list[float]:
        """log p(ys[j] | src[rows[j]]), EOS included, for every candidate j; src (B, Lx).

        Candidates in consecutive chunks of about PROJECT_CHUNK scored positions
        (`onnx_nat.row_chunks`), each padded to its own longest source and target."""
        from lanmt_cli.padding import pad_tokens

        valid = (src != PAD).cpu()  # (B, Lx)
        picked = src.cpu()[rows]  # (N, Lx)
        widths = valid.sum(1)[rows]  # (N,)
        scores: list[float] = []
        for part, _ in onnx_nat.row_chunks(torch.tensor([len(y) + 1 for y in ys])):
            lx = max(1, int(widths[part].max()))
            feed = {"src": picked[part, :lx].numpy(), "tgt": pad_tokens(ys[part]).numpy()}
            (logp,) = self.session.run(None, feed)  # (n, Ly+1)
            scores.extend(logp.sum(1, dtype=np.float64).tolist())
        return scores


def scorer_for(model: Transformer, compute_type: str = "default") -> OnnxTeacher:
    """The scorer of a teacher module, made once per graph type and kept on the module."""
    kind = graph_type(compute_type)
    scorers = model.__dict__.setdefault("_onnx_scorers", {})
    if kind not in scorers:
        scorers[kind] = OnnxTeacher(model, kind, torch.get_num_threads())
    return scorers[kind]
