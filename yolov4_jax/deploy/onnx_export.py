"""The detector as an ONNX graph, built layer by layer from the model's layer list.

Why build the graph ourselves (with `onnx.helper`) rather than convert the traced JAX function
(jax2onnx): the network is already a list of darknet layers (`models.specs`), each of which is
one to five standard ONNX operators, so the graph reads like the cfg (node names carry the
layer index), a layer without an ONNX form is reported by index and kind, and nothing depends
on a converter following each JAX release's primitives (the model's custom VJPs, Winograd's
transforms and optimisation barriers are training and CPU details the graph does not need).
The price is that the two definitions must agree; `export` runs both on the same images
before writing (ONNX Runtime against ``model.apply``), and the tests cover every layer kind.

Semantics, as the JAX model (`models.network`, `models.layers`):

* convolutions with darknet's symmetric padding; BatchNorm's running statistics folded into
  the kernel and a bias (in float64, then float32), as inference engines do anyway;
* Mish as ``x * tanh(softplus(x))`` (Softplus, Tanh, Mul: opset 17 has no Mish operator;
  darknet's softplus threshold changes nothing in float32), leaky with slope 0.1;
* max-pool with darknet's ``padding // 2`` before and the rest after, padded cells never
  winning (ONNX MaxPool's padding);
* upsampling as nearest-neighbour Resize with ``asymmetric`` coordinates and ``floor``
  (output pixel i reads input i // stride, as repeating each pixel does);
* route as Concat of whole layers or of Slice'd channel groups, shortcut as Add (a partial
  residual adds into the leading channels only), weighted fusion with its normalised weights
  folded into constants, SAM and CBAM's attentions as their products, DropBlock as identity.

Images enter as ``[N, H, W, 3]`` (N dynamic) and are transposed to NCHW once; each head
leaves transposed back to ``[N, H/s, W/s, A*(5+C)]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from yolov4_jax.deploy.signature import ExportError, output_names
from yolov4_jax.models import Network, layer_name, output_shapes, specs
from yolov4_jax.models.layers import BN_EPSILON, LEAKY_SLOPE

try:  # the `export` extra; only this format needs it
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError:  # pragma: no cover - reported by `require_onnx`
    onnx = None

try:
    import onnxruntime
except ImportError:  # pragma: no cover - reported by `run_onnx`
    onnxruntime = None

OPSET = 17
_INSTALL = "pip install onnx onnxruntime (or the project's [export] extra)"


def require_onnx() -> None:
    if onnx is None:
        raise ExportError(f"--format onnx needs the onnx package: {_INSTALL}")


class _Graph:
    """Nodes and constants under construction, with unique names."""

    def __init__(self):
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}/{self._count}"

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def ints(self, hint: str, values: Sequence[int]) -> str:
        return self.const(hint, np.asarray(values, np.int64))

    def op(self, op_type: str, inputs: Sequence[str], hint: str, **attrs) -> str:
        out = self.name(hint)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def slice_channels(self, x: str, start: int, end: int, hint: str) -> str:
        return self.op(
            "Slice",
            [x, self.ints(hint, [start]), self.ints(hint, [end]), self.ints(hint, [1])],
            hint,
        )

    def activation(self, x: str, name: str, hint: str) -> str:
        if name == "linear":
            return x
        if name == "leaky":
            return self.op("LeakyRelu", [x], hint, alpha=LEAKY_SLOPE)
        if name == "mish":
            tanh = self.op("Tanh", [self.op("Softplus", [x], hint)], hint)
            return self.op("Mul", [x, tanh], hint)
        if name == "swish":
            return self.op("Mul", [x, self.op("Sigmoid", [x], hint)], hint)
        if name == "relu":
            return self.op("Relu", [x], hint)
        if name == "logistic":
            return self.op("Sigmoid", [x], hint)
        raise ExportError(f"{hint}: activation {name!r} has no ONNX form here")

    def conv(self, x, kernel, bias, *, stride=1, padding=0, groups=1, hint="conv") -> str:
        """``kernel`` HWIO (JAX's layout) -> ONNX's OIHW."""
        kernel = np.ascontiguousarray(np.transpose(np.asarray(kernel, np.float32), (3, 2, 0, 1)))
        size = kernel.shape[2]
        return self.op(
            "Conv",
            [x, self.const(hint + "/kernel", kernel), self.const(hint + "/bias", bias)],
            hint,
            kernel_shape=[size, size],
            strides=[stride, stride],
            pads=[padding] * 4,
            group=groups,
        )


def _folded(spec: specs.Conv, params, stats) -> tuple[np.ndarray, np.ndarray]:
    """The layer's kernel and bias with inference BatchNorm folded in (float64 -> float32):
    bn(conv(x, W)) = conv(x, W * g) + (beta - mean * g) with g = scale / sqrt(var + eps)."""
    kernel = np.asarray(params["kernel"], np.float64)
    if not spec.batch_normalize:
        return kernel.astype(np.float32), np.asarray(params["bias"], np.float32)
    bn, st = params["bn"], stats["bn"]
    gain = np.asarray(bn["scale"], np.float64) / np.sqrt(
        np.asarray(st["var"], np.float64) + BN_EPSILON
    )
    bias = np.asarray(bn["bias"], np.float64) - np.asarray(st["mean"], np.float64) * gain
    return (kernel * gain).astype(np.float32), bias.astype(np.float32)


def _fusion_weights(spec: specs.Shortcut, weights: np.ndarray) -> np.ndarray:
    """`layers.WeightedFusion`'s normalised weights, [n] or [n, C]."""
    w = np.asarray(weights, np.float32)
    if spec.weights_normalization == "relu":
        w = np.maximum(w, 0)
        return w / (np.sum(w, axis=0, keepdims=True) + np.float32(1e-4))
    if spec.weights_normalization == "softmax":
        e = np.exp(w - w.max(axis=0, keepdims=True))
        return e / e.sum(axis=0, keepdims=True)
    return w


def _layers(g: _Graph, model: Network, variables, x: str, size: tuple[int, int]) -> list[str]:
    """Adds every layer; returns the head tensors (NCHW), or the last layer's."""
    params = variables["params"]
    stats = variables.get("batch_stats", {})
    shapes = output_shapes(model.layers, *size, 3)
    outputs: list[str] = []
    heads: list[str] = []
    for i, spec in enumerate(model.layers):
        name = layer_name(i)
        hint = f"{name}_{type(spec).__name__.lower()}"
        if isinstance(spec, specs.Conv):
            kernel, bias = _folded(spec, params[name], stats.get(name, {}))
            x = g.conv(
                x,
                kernel,
                bias,
                stride=spec.stride,
                padding=spec.padding,
                groups=spec.groups,
                hint=hint,
            )
            x = g.activation(x, spec.activation, hint)
        elif isinstance(spec, specs.MaxPool):
            before = spec.padding // 2
            after = spec.padding - before
            x = g.op(
                "MaxPool",
                [x],
                hint,
                kernel_shape=[spec.size, spec.size],
                strides=[spec.stride, spec.stride],
                pads=[before, before, after, after],
            )
        elif isinstance(spec, specs.Upsample):
            scales = g.const(hint, np.asarray([1, 1, spec.stride, spec.stride], np.float32))
            x = g.op(
                "Resize",
                [x, "", scales],
                hint,
                mode="nearest",
                coordinate_transformation_mode="asymmetric",
                nearest_mode="floor",
            )
        elif isinstance(spec, specs.Route):
            parts = []
            for j in spec.layers:
                chunk = shapes[j][2] // spec.groups
                if spec.groups == 1:
                    parts.append(outputs[j])
                else:
                    start = spec.group_id * chunk
                    parts.append(g.slice_channels(outputs[j], start, start + chunk, hint))
            x = parts[0] if len(parts) == 1 else g.op("Concat", parts, hint, axis=1)
        elif isinstance(spec, specs.Shortcut):
            x = _shortcut(g, spec, x, outputs, shapes, i, params.get(name), hint)
        elif isinstance(spec, specs.Sam):
            x = g.op("Mul", [x, outputs[spec.layer]], hint)
        elif isinstance(spec, specs.SpatialAttention):
            mean = g.op("ReduceMean", [x], hint, axes=[1], keepdims=1)
            peak = g.op("ReduceMax", [x], hint, axes=[1], keepdims=1)
            pooled = g.op("Concat", [mean, peak], hint, axis=1)
            conv = params[name]["conv"]
            pad = spec.size // 2
            attention = g.conv(pooled, conv["kernel"], conv["bias"], padding=pad, hint=hint)
            x = g.op("Mul", [x, g.op("Sigmoid", [attention], hint)], hint)
        elif isinstance(spec, specs.ChannelAttention):
            p = params[name]

            def mlp(v, p=p, hint=hint):  # Dense layers as 1x1 convolutions on [N, C, 1, 1]
                k1 = np.asarray(p["fc1"]["kernel"])[None, None]
                k2 = np.asarray(p["fc2"]["kernel"])[None, None]
                h = g.op("Relu", [g.conv(v, k1, p["fc1"]["bias"], hint=hint)], hint)
                return g.conv(h, k2, p["fc2"]["bias"], hint=hint)

            scores = g.op(
                "Add",
                [
                    mlp(g.op("GlobalAveragePool", [x], hint)),
                    mlp(g.op("GlobalMaxPool", [x], hint)),
                ],
                hint,
            )
            x = g.op("Mul", [x, g.op("Sigmoid", [scores], hint)], hint)
        elif isinstance(spec, specs.DropBlock):
            pass  # inference: identity
        elif isinstance(spec, specs.AvgPool):
            x = g.op("GlobalAveragePool", [x], hint)
        elif isinstance(spec, specs.Yolo):
            heads.append(x)
        else:
            raise ExportError(
                f"layer {i} ({type(spec).__name__}) has no ONNX form in this exporter"
            )
        outputs.append(x)
    return heads or [x]


def _shortcut(g, spec, x, outputs, shapes, i, params, hint) -> str:
    inputs = [x] + [outputs[j] for j in spec.layers]
    depths = [shapes[i - 1][2]] + [shapes[j][2] for j in spec.layers]
    if spec.weights_type == "none":
        depth = depths[0]
        for residual, other in zip(inputs[1:], depths[1:], strict=True):
            c = min(depth, other)
            if c == depth == other:
                x = g.op("Add", [x, residual], hint)
            else:  # `network.add_residual`: only the leading channels both have
                head = g.op(
                    "Add",
                    [g.slice_channels(x, 0, c, hint), g.slice_channels(residual, 0, c, hint)],
                    hint,
                )
                if c < depth:
                    x = g.op("Concat", [head, g.slice_channels(x, c, depth, hint)], hint, axis=1)
                else:
                    x = head
    elif spec.weights_type in ("per_feature", "per_channel"):
        if spec.weights_normalization not in ("none", "relu", "softmax"):
            raise ExportError(
                f"layer {i} (shortcut): weights_normalization "
                f"{spec.weights_normalization!r} has no ONNX form"
            )
        w = _fusion_weights(spec, params["weights"])
        total = None
        for k, inp in enumerate(inputs):
            wk = w[k].reshape(1, -1, 1, 1) if w.ndim == 2 else w[k].reshape(1, 1, 1, 1)
            term = g.op("Mul", [g.const(hint + "/w", wk), inp], hint)
            total = term if total is None else g.op("Add", [total, term], hint)
        x = total
    else:
        raise ExportError(f"layer {i} (shortcut): weights_type {spec.weights_type!r} unknown")
    return g.activation(x, spec.activation, hint)


def _decode(g: _Graph, head: str, spec: specs.Yolo, hw: tuple[int, int], size) -> tuple[str, str]:
    """`detection.decode.decode_yolo` on one NHWC head: (boxes [N, M, 4], scores [N, M, C])."""
    (h, w), (height, width) = hw, size
    a, c = len(spec.mask), spec.classes
    hint = "decode"
    out = g.op("Reshape", [head, g.ints(hint, [-1, h, w, a, 5 + c])], hint)
    txy = g.op("Slice", [out, g.ints(hint, [0]), g.ints(hint, [2]), g.ints(hint, [4])], hint)
    twh = g.op("Slice", [out, g.ints(hint, [2]), g.ints(hint, [4]), g.ints(hint, [4])], hint)
    obj = g.op("Slice", [out, g.ints(hint, [4]), g.ints(hint, [5]), g.ints(hint, [4])], hint)
    cls = g.op("Slice", [out, g.ints(hint, [5]), g.ints(hint, [5 + c]), g.ints(hint, [4])], hint)
    s = np.float32(spec.scale_x_y)
    if spec.new_coords:
        scale = g.op("Mul", [g.const(hint, np.float32(4)), g.op("Mul", [twh, twh], hint)], hint)
    else:
        txy, obj, cls = (g.op("Sigmoid", [t], hint) for t in (txy, obj, cls))
        capped = g.op("Min", [twh, g.const(hint, np.float32(20.0))], hint)  # MAX_LOG_SCALE
        scale = g.op("Exp", [capped], hint)
    offset = g.op(
        "Sub",
        [g.op("Mul", [g.const(hint, s), txy], hint), g.const(hint, np.float32(0.5) * (s - 1))],
        hint,
    )
    cols, rows = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    grid = np.stack([cols, rows], axis=-1)[None, :, :, None, :]  # [1, H, W, 1, 2]
    centre = g.op("Add", [g.const(hint, grid), offset], hint)
    centre = g.op("Div", [centre, g.const(hint, np.asarray([w, h], np.float32))], hint)
    anchors = np.asarray(spec.head_anchors, np.float32) / np.asarray([width, height], np.float32)
    box_size = g.op("Mul", [scale, g.const(hint, anchors)], hint)
    half = g.op("Mul", [g.const(hint, np.float32(0.5)), box_size], hint)
    boxes = g.op(
        "Concat",
        [g.op("Sub", [centre, half], hint), g.op("Add", [centre, half], hint)],
        hint,
        axis=-1,
    )
    total = h * w * a
    boxes = g.op("Reshape", [boxes, g.ints(hint, [-1, total, 4])], hint)
    obj = g.op("Reshape", [obj, g.ints(hint, [-1, total, 1])], hint)
    cls = g.op("Reshape", [cls, g.ints(hint, [-1, total, c])], hint)
    return boxes, g.op("Mul", [obj, cls], hint)


def build_onnx(
    model: Network, variables: Any, size: tuple[int, int], *, decode: bool = False
) -> Any:
    """The ONNX model (``onnx.ModelProto``, opset 17) of ``model`` at ``size`` (height,
    width): input ``images`` float32 ``[N, H, W, 3]``, outputs `deploy.output_names`."""
    require_onnx()
    variables = {k: _numpy(v) for k, v in variables.items() if k in ("params", "batch_stats")}
    g = _Graph()
    height, width = size
    x = g.op("Transpose", ["images"], "input", perm=[0, 3, 1, 2])
    raw = [
        g.op("Transpose", [t], "output", perm=[0, 2, 3, 1])
        for t in _layers(g, model, variables, x, size)
    ]
    names = output_names(model, decode)
    results = list(raw)
    shapes = output_shapes(model.layers, height, width, 3)
    if decode:
        boxes, scores = [], []
        heads = [i for i, s in enumerate(model.layers) if isinstance(s, specs.Yolo)]
        for t, i in zip(raw, heads, strict=True):
            b, s = _decode(g, t, model.layers[i], shapes[i][:2], size)
            boxes.append(b)
            scores.append(s)
        results.append(boxes[0] if len(boxes) == 1 else g.op("Concat", boxes, "boxes", axis=1))
        results.append(scores[0] if len(scores) == 1 else g.op("Concat", scores, "scores", axis=1))
    for tensor, name in zip(results, names, strict=True):  # give the outputs their names
        g.nodes.append(helper.make_node("Identity", [tensor], [name], name=name))
    out_shapes = _output_shapes(model, shapes, decode)
    graph = helper.make_graph(
        g.nodes,
        "yolov4_jax",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", height, width, 3])],
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", *shape])
            for n, shape in zip(names, out_shapes, strict=True)
        ],
        initializer=g.initializers,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="yolov4_jax",
        doc_string="images [N, H, W, 3] float32 RGB in [0, 1] -> raw [yolo] head outputs "
        "[N, H/s, W/s, A*(5+C)]"
        + (", boxes [N, M, 4] xyxy in [0, 1], scores [N, M, C]" if decode else ""),
    )
    proto.ir_version = min(proto.ir_version, 10)  # readable by ONNX Runtime 1.20+
    onnx.checker.check_model(proto)
    return proto


def _output_shapes(model: Network, shapes, decode: bool) -> list[list[int]]:
    heads = [list(shapes[i]) for i, s in enumerate(model.layers) if isinstance(s, specs.Yolo)]
    result = heads or [list(shapes[-1])]
    if decode:
        total = sum(h * w * len(s.mask) for (h, w, _), s in zip(heads, model.heads, strict=True))
        result += [[total, 4], [total, model.heads[0].classes]]
    return result


def _numpy(tree):
    if isinstance(tree, dict) or hasattr(tree, "items"):
        return {k: _numpy(v) for k, v in tree.items()}
    return np.asarray(tree)


def run_onnx(serialized: bytes, images: np.ndarray) -> list[np.ndarray]:
    """The outputs of a serialised ONNX model on ``images`` through ONNX Runtime's CPU."""
    if onnxruntime is None:
        raise ExportError(f"checking an ONNX export needs onnxruntime: {_INSTALL}")
    session = onnxruntime.InferenceSession(serialized, providers=["CPUExecutionProvider"])
    return session.run(None, {"images": np.asarray(images, np.float32)})
