"""The LaNMT model on ONNX Runtime: the CPU runtime of the non-autoregressive decoders.

The model's steps are exported once to ONNX graphs, with dynamic batch and lengths (the
attention projections fused, `lanmt_cli.layers.fuse_attention`). Two are whole passes, so
that one-shot decoding is one call and each refinement step another:

- `prior_pass`: source ids -> embeddings, prior states, prior mean and std, the most likely
  target lengths, argmax tokens and their log-probabilities (PAD and 0 beyond each length);
- `posterior_pass`: embeddings, prior states, source mask, target ids -> the same lengths,
  tokens and log-probabilities, from the posterior mean;

and four are the single steps a search combines otherwise (length beam, latent search):

- `encoder`: source ids -> embeddings, prior states, prior mean and std;
- `posterior`: embeddings, source mask, target ids -> posterior mean and std;
- `length`: prior states, source mask, z -> length scores;
- `tokens`: prior states, source mask, z, target lengths, positions -> argmax tokens and their
  log-probabilities.

`OnnxLaNMT` runs them behind the same step methods as `lanmt_cli.model.LaNMT`
(`encode_source`, `prior`, `posterior`, `length_logits`, `predict_length`, `best_tokens`,
`decode_z`, `decode_prior`, `decode_posterior`), so the decoders search over either runtime
alike. A session is made when its graph is first used.

Compute types: float32 (the exported graphs; the same argmax tokens as PyTorch) and int8.
int8 rewrites every matrix product with a constant weight and an inner size of at least 64
into integer arithmetic: one scale per weight column, and one fixed scale per input tensor,
calibrated at export on the float32 graphs (`activation_ranges`). A fixed scale makes each
token's result depend on that token alone, so a sentence decodes the same in any batch (ONNX
Runtime's dynamic quantization scales a whole tensor at once, which a batch's other sentences
change), and it costs one QuantizeLinear per input, where a scale per row took eight
element-wise passes. The calibration source is random token ids (`calibration_feeds`), so
that export needs no data: after layer normalisation the ranges of random and real text agree
within about 20%; products with a smaller inner size (the latent's) keep float32, as their
range does not (the prior mean of random text is a quarter of real text's). Weights keep 7
bits (|w| <= 63): on AVX2 CPUs without VNNI the u8 x s8 kernel adds pairs of products in 16
bits, which 8-bit weights can overflow.

Where the graphs come from: a cache folder (`LANMT_CACHE`, or the platform's user cache) named
by the sha256 of the weights and the exporter's version, built once, atomically (about 10 s
for the shipped model), with the sha256 of every file, checked before loading: a damaged
file is exported again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from lanmt_cli import cache
from lanmt_cli.config import NUM_SPECIAL, PAD
from lanmt_cli.errors import LanmtError
from lanmt_cli.layers import fuse_attention
from lanmt_cli.model import PROJECT_CHUNK, Decoded, Gaussian, LaNMT, Source

EXPORT_VERSION = 5  # bump when the graphs change: old exports are then rebuilt
FOLDER = "onnx"
OPSET = 18
COMPUTE_TYPES = ("float32", "int8")
INT8_WEIGHT_MAX = 63  # 7-bit weights: no 16-bit overflow in AVX2's u8 x s8 pair sums
INT8_MIN_DEPTH = 64  # products over fewer inputs (the latent's 8) stay float32
CALIBRATION = (256, 32, 4, 40)  # random sentences, a batch, their shortest and longest


# --- the graphs ----------------------------------------------------------------------------


class _Encoder(nn.Module):
    def __init__(self, model: LaNMT):
        super().__init__()
        self.model = model

    def forward(self, src: Tensor):  # src (B, Lx)
        source = self.model.encode_source(src)
        prior = self.model.prior(source)
        return source.embedded, source.states, prior.mean, prior.std


class _Posterior(nn.Module):
    def __init__(self, model: LaNMT):
        super().__init__()
        self.model = model

    def forward(self, embedded: Tensor, valid: Tensor, tgt: Tensor):  # (B, Lx, H), (B, Lx), (B, Ly)
        q = self.model.posterior(Source(embedded, embedded, valid), tgt)
        return q.mean, q.std


class _Length(nn.Module):
    def __init__(self, model: LaNMT):
        super().__init__()
        self.model = model

    def forward(self, states: Tensor, valid: Tensor, z: Tensor):  # -> (B, 2W)
        return self.model.length_logits(Source(states, states, valid), z)


def _argmax_tokens(
    model: LaNMT, source: Source, z: Tensor, lengths: Tensor, positions: Tensor
) -> tuple[Tensor, Tensor]:
    """Argmax tokens (B, Ly) and their log-probabilities, PAD and 0 beyond each length;
    Ly = the size of positions (0, 1, ..., Ly - 1)."""
    h = model.decoder_states(source, z, lengths, positions.size(0))  # (B, Ly, H)
    # as LaNMT.best_tokens: the argmax of the log-softmax (a LogSoftmax node: vectorised,
    # where ReduceLogSumExp took a sixth of a batched one-shot pass)
    logp, tokens = model.project(h).log_softmax(-1).max(-1)  # (B, Ly) each
    inside = positions[None, :] < lengths[:, None]  # (B, Ly)
    return tokens.where(inside, PAD), logp.where(inside, 0.0)


class _Tokens(nn.Module):
    def __init__(self, model: LaNMT):
        super().__init__()
        self.model = model

    def forward(self, states: Tensor, valid: Tensor, z: Tensor, lengths: Tensor, positions: Tensor):
        return _argmax_tokens(self.model, Source(states, states, valid), z, lengths, positions)


class _PriorPass(nn.Module):
    def __init__(self, model: LaNMT):
        super().__init__()
        self.model = model

    def forward(self, src: Tensor):  # (B, Lx)
        m = self.model
        source = m.encode_source(src)
        prior = m.prior(source)
        lengths = m.predict_length(source, prior.mean)  # (B,)
        positions = torch.arange(lengths.max())  # (Ly,): traced as a computed size
        tokens, logp = _argmax_tokens(m, source, prior.mean, lengths, positions)
        return source.embedded, source.states, prior.mean, prior.std, lengths, tokens, logp


class _PosteriorPass(nn.Module):
    def __init__(self, model: LaNMT):
        super().__init__()
        self.model = model

    def forward(self, embedded: Tensor, states: Tensor, valid: Tensor, tgt: Tensor):
        m = self.model
        source = Source(embedded, states, valid)
        z = m.posterior(source, tgt).mean  # (B, Lx, D)
        lengths = m.predict_length(source, z)  # (B,)
        tokens, logp = _argmax_tokens(m, source, z, lengths, torch.arange(lengths.max()))
        return lengths, tokens, logp


def _examples(model: LaNMT) -> dict[str, tuple]:
    """Example inputs per graph: batch 3, source 7, target 9 (no dimension of size 1, which
    an exporter may take for a constant)."""
    c = model.config
    src = torch.randint(4, c.src_vocab, (3, 7))
    valid = torch.ones(3, 7, dtype=torch.bool)
    states = torch.randn(3, 7, c.hidden)
    z = torch.randn(3, 7, c.latent_dim)
    tgt = torch.randint(4, c.tgt_vocab, (3, 9))
    return {
        "prior_pass": (src,),
        "posterior_pass": (states, states, valid, tgt),
        "encoder": (src,),
        "posterior": (states, valid, torch.randint(4, c.tgt_vocab, (3, 9))),
        "length": (states, valid, z),
        "tokens": (states, valid, z, torch.tensor([9, 8, 5]), torch.arange(9)),
    }


# Input and output names of each graph, and the dynamic axes of every name.
NAMES = {
    "prior_pass": (
        ["src"],
        ["embedded", "states", "prior_mean", "prior_std", "lengths", "tokens", "logp"],
    ),
    "posterior_pass": (["embedded", "states", "valid", "tgt"], ["lengths", "tokens", "logp"]),
    "encoder": (["src"], ["embedded", "states", "prior_mean", "prior_std"]),
    "posterior": (["embedded", "valid", "tgt"], ["mean", "std"]),
    "length": (["states", "valid", "z"], ["logits"]),
    "tokens": (["states", "valid", "z", "lengths", "positions"], ["tokens", "logp"]),
}
_SRC, _TGT = {0: "batch", 1: "src_len"}, {0: "batch", 1: "tgt_len"}
AXES = {
    **dict.fromkeys(["src", "embedded", "states", "prior_mean", "prior_std", "valid", "z"], _SRC),
    **dict.fromkeys(["mean", "std"], _SRC),
    **dict.fromkeys(["tgt", "tokens", "logp"], _TGT),
    "lengths": {0: "batch"},
    "positions": {0: "tgt_len"},
    "logits": {0: "batch"},
}


GRAPHS = {
    "prior_pass": _PriorPass,
    "posterior_pass": _PosteriorPass,
    "encoder": _Encoder,
    "posterior": _Posterior,
    "length": _Length,
    "tokens": _Tokens,
}


def weights_key(model: nn.Module) -> str:
    """sha256 of the model's weights (names, shapes, float32 values) and the exporter."""
    return cache.weights_key(model, f"lanmt-onnx-{EXPORT_VERSION}")


def graph_files(compute_type: str) -> list[str]:
    return [f"{name}.{compute_type}.onnx" for name in GRAPHS]


def export(model: LaNMT, dest: str | Path, key: str | None = None) -> Path:
    """Write the float32 and int8 graphs of `model` to the folder `dest`, atomically."""
    import copy
    import warnings

    from lanmt_cli.textio import atomic_dir

    dest = Path(dest)
    key = key or weights_key(model)
    plain = fuse_attention(copy.deepcopy(model).float().cpu().eval())
    examples = _examples(plain)
    try:
        with atomic_dir(dest, replace=False) as tmp, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on traced shapes
            for name, graph in GRAPHS.items():
                inputs, outputs = NAMES[name]
                path = tmp / f"{name}.float32.onnx"
                axes = {n: AXES[n] for n in inputs + outputs}
                trace(graph(plain), examples[name], path, inputs, outputs, axes)
            feeds = calibration_feeds(plain.config, tmp)
            for name in GRAPHS:
                path = tmp / f"{name}.float32.onnx"
                quantize_int8(path, tmp / f"{name}.int8.onnx", activation_ranges(path, feeds))
            cache.write_record(tmp, key, exporter=EXPORT_VERSION)
    except LanmtError:  # unless another process exported the same weights meanwhile
        if not cache.intact(dest, key):
            raise
    return dest


def trace(
    module: nn.Module, example: tuple, path: Path, inputs: list[str], outputs: list[str],
    axes: dict[str, dict[int, str]],
) -> None:  # fmt: skip
    """Export `module` to `path` with the tracing exporter (seconds, where dynamo takes
    minutes), OPSET, the named inputs and outputs, and their dynamic axes."""
    with torch.no_grad():
        torch.onnx.export(
            module, example, str(path), dynamo=False, input_names=inputs, output_names=outputs,
            dynamic_axes=axes, opset_version=OPSET,
        )  # fmt: skip


def model_dir(model: LaNMT, compute_type: str = "float32") -> Path:
    """The exported graphs of `model`: from the cache, exported there once if missing, and
    exported again if a file of `compute_type` is damaged (its checksum differs)."""
    key = weights_key(model)
    return cache.kept(FOLDER, key, graph_files(compute_type), lambda d: export(model, d, key))


# --- int8: fixed input scales, per-column weight scales -----------------------------------------


def random_ids(rng: np.random.Generator, vocab: int, max_len: int) -> list[np.ndarray]:
    """CALIBRATION's random sentences, in batches (B, L) of int64 ids NUM_SPECIAL..vocab-1,
    PAD-padded: lengths drawn first and sorted (capped by max_len), then the ids row by row."""
    count, batch, shortest, longest = CALIBRATION
    lengths = np.sort(rng.integers(shortest, min(longest, max_len) + 1, size=count))
    batches = []
    for start in range(0, count, batch):
        rows = lengths[start : start + batch]
        ids = np.full((len(rows), rows.max()), PAD, dtype=np.int64)  # (B, L)
        for i, n in enumerate(rows):
            ids[i, :n] = rng.integers(NUM_SPECIAL, vocab, size=n)
        batches.append(ids)
    return batches


def calibration_feeds(config, folder: Path) -> list[dict[str, np.ndarray]]:
    """Inputs for every graph from random source ids: the ids, and what the float32 prior pass
    in `folder` makes of them (its embeddings, states, prior mean, lengths and tokens)."""
    import onnxruntime as ort

    sources = random_ids(np.random.default_rng(0), config.src_vocab, config.max_len)
    session = ort.InferenceSession(
        str(folder / "prior_pass.float32.onnx"),
        session_options(torch.get_num_threads()),
        providers=["CPUExecutionProvider"],
    )
    feeds = []
    for src in sources:
        out = dict(zip(NAMES["prior_pass"][1], session.run(None, {"src": src}), strict=True))
        feeds.append({
            "src": src, "embedded": out["embedded"], "states": out["states"],
            "valid": src != PAD, "tgt": out["tokens"], "z": out["prior_mean"],
            "lengths": out["lengths"], "positions": np.arange(out["tokens"].shape[1]),
        })  # fmt: skip
    return feeds


def _products(graph, consts) -> dict[int, np.ndarray]:
    """The matrix products int8 rewrites: node index -> its weight (K, N), K >= INT8_MIN_DEPTH."""
    from onnx import numpy_helper

    found = {}
    for index, node in enumerate(graph.node):
        name = _constant_weight(node, consts)
        if name is None:
            continue
        w = numpy_helper.to_array(consts[name]).astype(np.float32)
        if node.op_type == "Gemm" and _attr(node, "transB", 0):
            w = w.T
        if w.shape[0] >= INT8_MIN_DEPTH:
            found[index] = w
    return found


def activation_ranges(path: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """max |x| over the calibration feeds of every input of a product int8 rewrites."""
    import onnx
    import onnxruntime as ort

    graph_model = onnx.load(str(path))
    consts = {t.name: t for t in graph_model.graph.initializer}
    nodes = graph_model.graph.node
    watched = list(dict.fromkeys(nodes[i].input[0] for i in _products(graph_model.graph, consts)))
    outputs = {o.name for o in graph_model.graph.output}
    for name in watched:
        if name not in outputs:
            graph_model.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )
    session = ort.InferenceSession(
        graph_model.SerializeToString(),
        session_options(torch.get_num_threads()),
        providers=["CPUExecutionProvider"],
    )
    taken = [i.name for i in session.get_inputs()]
    names = [o.name for o in session.get_outputs()]
    ranges = dict.fromkeys(watched, 0.0)
    for feed in feeds:
        values = dict(zip(names, session.run(None, {n: feed[n] for n in taken}), strict=True))
        for name in watched:
            ranges[name] = max(ranges[name], float(np.abs(values[name]).max()))
    return ranges


def _bias_adds(graph, consts, products: dict[int, np.ndarray]) -> dict[int, tuple[int, str]]:
    """Product index -> (index of the Add that adds a constant bias (N,) to its output, the
    bias' name), where that Add is the output's only use."""
    uses: dict[str, list[int]] = {}
    for index, node in enumerate(graph.node):
        for name in node.input:
            uses.setdefault(name, []).append(index)
    found = {}
    for index, w in products.items():
        after = uses.get(graph.node[index].output[0], [])
        if len(after) != 1 or graph.node[after[0]].op_type != "Add":
            continue
        add = graph.node[after[0]]
        other = [n for n in add.input if n != graph.node[index].output[0]]
        if len(other) == 1 and other[0] in consts and list(consts[other[0]].dims) == [w.shape[1]]:
            found[index] = (after[0], other[0])
    return found


def quantize_int8(source: Path, dest: Path, ranges: dict[str, float]) -> None:
    """Rewrite the matrix products with a constant weight (K, N), K >= INT8_MIN_DEPTH, as
    integer products.

    x (..., K) float -> q = round(x / s) + 128 (uint8, saturated) with the fixed scale
    s = ranges[x] / 127; the weight w -> int8 with column scales t = max|w| / 63. Then
    MatMulIntegerToFloat(q, w_q, s, t, zero point 128, bias) in float32: ONNX Runtime's
    contrib op applies both scales and adds the bias as the product is written out (the
    exporter's separate Add of a bias is folded in).
    """
    import onnx
    from onnx import helper, numpy_helper

    graph_model = onnx.load(str(source))
    graph = graph_model.graph
    consts = {t.name: t for t in graph.initializer}
    products = _products(graph, consts)
    nodes, added = [], []
    counter = iter(range(1 << 30))

    def const(array: np.ndarray, stem: str) -> str:
        name = f"q8_{stem}_{next(counter)}"
        added.append(numpy_helper.from_array(array, name))
        return name

    zero = const(np.array(128, dtype=np.uint8), "zero")
    biases = _bias_adds(graph, consts, products)  # product index -> (its Add's index, bias)
    folded = {add for add, _ in biases.values()}
    quantized: dict[str, tuple[str, str]] = {}  # input -> its uint8 values and its scale
    for index, node in enumerate(graph.node):
        if index in folded:
            continue
        if index not in products:
            nodes.append(node)
            continue
        w = products[index]
        scale = np.maximum(np.abs(w).max(0), 1e-12) / INT8_WEIGHT_MAX  # (N,)
        wq = np.clip(np.round(w / scale), -INT8_WEIGHT_MAX, INT8_WEIGHT_MAX).astype(np.int8)
        x, out, bias = node.input[0], node.output[0], None
        if node.op_type == "Gemm" and len(node.input) > 2:
            bias = node.input[2]
        elif index in biases:  # the Add of the bias, folded in: it writes the Add's output
            add, bias = biases[index]
            out = graph.node[add].output[0]
        if x not in quantized:  # once per input: q, k and v, or every layer's memory, share it
            s = const(np.array(max(ranges[x], 1e-6) / 127.0, dtype=np.float32), "s")
            q = f"q8_x_{next(counter)}"
            nodes.append(helper.make_node("QuantizeLinear", [x, s, zero], [q]))
            quantized[x] = (q, s)
        xq, s = quantized[x]
        t = const(scale.astype(np.float32), "t")
        inputs = [xq, const(wq, "w"), s, t, zero] + (["", bias] if bias else [])
        nodes.append(
            helper.make_node("MatMulIntegerToFloat", inputs, [out], domain="com.microsoft")
        )
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(added)
    used = {i for node in graph.node for i in node.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    if not any(o.domain == "com.microsoft" for o in graph_model.opset_import):
        graph_model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.save(graph_model, str(dest))


def _attr(node, name: str, default):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _constant_weight(node, consts) -> str | None:
    """The name of the constant 2-D weight of a MatMul / plain Gemm, else None."""
    plain_gemm = (
        node.op_type == "Gemm"
        and not _attr(node, "transA", 0)
        and _attr(node, "alpha", 1.0) == 1.0
        and _attr(node, "beta", 1.0) == 1.0
    )
    if not (node.op_type == "MatMul" or plain_gemm) or node.input[1] not in consts:
        return None
    name = node.input[1]
    return name if len(consts[name].dims) == 2 else None


# --- running them --------------------------------------------------------------------------


class OnnxSource(Source):
    """An encoded source that also carries its prior (computed in the same graph)."""

    def __init__(self, embedded, states, valid, prior: Gaussian):
        super().__init__(embedded, states, valid)
        self.prior_gaussian = prior

    def select(self, index: Tensor) -> OnnxSource:
        p = self.prior_gaussian
        picked = [t.index_select(0, index) for t in (self.embedded, self.states, self.valid)]
        return OnnxSource(*picked, Gaussian(p.mean[index], p.std[index]))


_POOL: list[int] = []  # threads of the process' ONNX Runtime thread pool, once made


def session_options(threads: int):
    """Options for a session on the process' one thread pool and one memory arena, both made
    by the first session, the pool on `threads` threads. One pool: sessions with pools of
    their own spin against each other (one-shot at batch 1 took 10 ms instead of 4.3; ONNX
    Runtime allows no other pool beside a global one). One arena: each session's own arena
    keeps the peak of its own activations, so that refine1's two graphs held 45 MiB more, and
    teacher-rescore's 199 MiB more, than with the arena they share now (peak memory of
    `lanmt translate` on 200 sentences: 609 and 896 MiB, now 564 and 697)."""
    import onnxruntime as ort

    if not _POOL:
        ort.set_default_logger_severity(3)
        ort.set_global_thread_pool_sizes(intra_op_num_threads=threads, inter_op_num_threads=1)
        cpu = ort.OrtMemoryInfo(
            "Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT
        )
        ort.create_and_register_allocator(cpu, ort.OrtArenaCfg(0, -1, -1, -1))  # defaults
        _POOL.append(threads)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.use_per_session_threads = False
    options.add_session_config_entry("session.use_env_allocators", "1")
    return options


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


class OnnxLaNMT:
    """The LaNMT step methods on ONNX Runtime sessions (compute_type float32 or int8)."""

    def __init__(self, model: LaNMT, compute_type: str = "float32", threads: int = 1):
        """threads: the size of the process' ONNX Runtime thread pool, if this is the first
        runtime of the process (`threads` reports the pool's size)."""
        if compute_type not in COMPUTE_TYPES:
            raise LanmtError(f"ONNX Runtime runs the model in {', '.join(COMPUTE_TYPES)} only")
        self.config = model.config
        self.compute_type = compute_type
        self.options = session_options(threads)  # before an export's calibration makes the pool
        self.folder = model_dir(model, compute_type)
        self.threads = _POOL[0]
        self.sessions: dict[str, tuple] = {}  # graph -> (session, the inputs it takes)

    def _session(self, name: str) -> tuple:
        """The session of graph `name` and its input names, made at its first use."""
        if name not in self.sessions:
            import onnxruntime as ort

            path = self.folder / f"{name}.{self.compute_type}.onnx"
            try:
                session = ort.InferenceSession(
                    str(path), self.options, providers=["CPUExecutionProvider"]
                )
            except Exception as err:  # ONNX Runtime's own errors have no common base class
                raise LanmtError(
                    f"ONNX Runtime cannot load {path}: {str(err).splitlines()[0]}"
                ) from None
            taken = {i.name for i in session.get_inputs()}  # an exporter drops unused inputs
            self.sessions[name] = (session, [n for n in NAMES[name][0] if n in taken])
        return self.sessions[name]

    def _run(self, name: str, *inputs: Tensor) -> list[Tensor]:
        session, taken = self._session(name)
        given = dict(zip(NAMES[name][0], inputs, strict=True))
        feed = {n: _np(given[n]) for n in taken}
        return [torch.from_numpy(a) for a in session.run(None, feed)]

    def encode_source(self, src: Tensor) -> OnnxSource:
        embedded, states, mean, std = self._run("encoder", src)
        return OnnxSource(embedded, states, src != PAD, Gaussian(mean, std))

    def prior(self, source: OnnxSource) -> Gaussian:
        return source.prior_gaussian

    def posterior(self, source: Source, tgt: Tensor) -> Gaussian:
        return Gaussian(*self._run("posterior", source.embedded, source.valid, tgt))

    def length_logits(self, source: Source, z: Tensor) -> Tensor:
        return self._run("length", source.states, source.valid, z.float())[0]

    predict_length = LaNMT.predict_length
    decode_z = LaNMT.decode_z

    def best_tokens(self, source: Source, z: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Argmax tokens (B, Ly) and their log-probabilities (PAD and 0 beyond each length),
        in chunks of about PROJECT_CHUNK target positions (`row_chunks`)."""
        parts = []
        for rows, _ in row_chunks(lengths):
            lx = _width(source.valid[rows])
            part, positions = lengths[rows], torch.arange(int(lengths[rows].max()))
            inputs = (source.states[rows, :lx], source.valid[rows, :lx], z[rows, :lx].float(),
                      part, positions)  # fmt: skip
            parts.append((part, *self._run("tokens", *inputs)))
        decoded = _joined(parts)
        return decoded.tokens, decoded.logps

    def decode_prior(self, src: Tensor) -> tuple[OnnxSource, Decoded]:
        """One-shot in one call a chunk (`prior_pass`): the encoded source, with its prior,
        and the argmax tokens at the most likely lengths."""
        valid = src != PAD
        chunks = row_chunks(valid.sum(1))
        outs = [self._run("prior_pass", src[rows, :width]) for rows, width in chunks]
        rows = [r for r, _ in chunks]
        embedded, states, mean, std = (_padded([o[i] for o in outs], rows, src.size(1))
                                       for i in range(4))  # fmt: skip
        source = OnnxSource(embedded, states, valid, Gaussian(mean, std))
        return source, _joined([o[4:] for o in outs])

    def decode_posterior(self, source: Source, tgt: Tensor) -> Decoded:
        """A refinement step in one call a chunk (`posterior_pass`)."""
        outs = []
        for rows, width in row_chunks((tgt != PAD).sum(1)):
            lx = _width(source.valid[rows])
            outs.append(self._run("posterior_pass", source.embedded[rows, :lx],
                                  source.states[rows, :lx], source.valid[rows, :lx],
                                  tgt[rows, :width]))  # fmt: skip
        return _joined(outs)


def row_chunks(lengths: Tensor) -> list[tuple[slice, int]]:
    """Consecutive rows in chunks of about PROJECT_CHUNK positions (rows x the chunk's
    longest of `lengths` (B,)), each with that width: each block of (positions x vocabulary)
    logits then stays in cache, and a chunk of short sentences is not padded to the batch's
    longest."""
    chunks, start, width = [], 0, 0
    for i, n in enumerate(lengths.tolist()):
        wider = max(width, n, 1)
        if i > start and (i - start + 1) * wider > PROJECT_CHUNK:
            chunks.append((slice(start, i), width))
            start, wider = i, max(n, 1)
        width = wider
    if lengths.numel():
        chunks.append((slice(start, lengths.numel()), width))
    return chunks


def _width(valid: Tensor) -> int:
    """The longest source of a chunk (B, Lx) bool: its columns beyond are all padding."""
    return max(1, int(valid.sum(1).max()))


def _padded(parts: list[Tensor], rows: list[slice], length: int) -> Tensor:
    """Chunks (b, lx_i, ...) of consecutive rows, zero-padded to one (B, length, ...)."""
    first = parts[0]
    out = first.new_zeros((rows[-1].stop, length, *first.shape[2:]))
    for part, r in zip(parts, rows, strict=True):
        out[r, : part.size(1)] = part
    return out


def _joined(parts: list) -> Decoded:
    """One Decoded from the (lengths, tokens, logps) of consecutive chunks of rows, each
    padded to its own longest."""
    lengths = torch.cat([p[0] for p in parts])
    ly = max(p[1].size(1) for p in parts)
    tokens = torch.full((lengths.size(0), ly), PAD, dtype=torch.long)
    logps = torch.zeros(lengths.size(0), ly)
    at = 0
    for _, t, p in parts:
        tokens[at : at + t.size(0), : t.size(1)] = t
        logps[at : at + t.size(0), : t.size(1)] = p
        at += t.size(0)
    return Decoded(lengths, tokens, logps)
