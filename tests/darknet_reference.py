"""A from-scratch NumPy model of darknet's forward pass, used as ground truth in tests.

This module deliberately shares no code with `yolov4_jax`: it has its own cfg parser, its
own shape bookkeeping, its own `.weights` reader/writer and its own layer kernels, all in
float64 and NHWC. It follows AlexeyAB/darknet's C code (parser.c, convolutional_layer.c,
maxpool_layer.c, route_layer.c, shortcut_layer.c, upsample_layer.c, avgpool_layer.c,
activations.c) for the layer types that yolov4.cfg, yolov4-tiny.cfg, yolov4-csp.cfg and
csresnext50.cfg use, and refuses anything else rather than guessing.

Public entry points:

* `parse_cfg(path)` -> list of `Section`
* `plan_network(sections, height, width, channels)` -> list of `Layer` with shapes
* `write_random_weights(cfg_path, weights_path, seed, ...)` -> writes a darknet `.weights`
* `read_weights(cfg_path, weights_path)` -> header and per-layer parameter arrays
* `reference_forward(cfg_path, weights_path, images)` -> the inputs of every `[yolo]` layer
* `weights_layout(cfg_path, major, minor)` -> byte ranges of every tensor in a `.weights`
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Sequence

import numpy as np

BN_EPSILON = 1e-5  # darknet: sqrt(rolling_variance + .00001)
SOFTPLUS_THRESHOLD = 20.0  # darknet's MISH_THRESHOLD
HEADER_INT32 = np.dtype("<i4")
SEEN_64 = np.dtype("<u8")
SEEN_32 = np.dtype("<i4")
FLOAT32 = np.dtype("<f4")


# --------------------------------------------------------------------------------------
# cfg parsing
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Section:
    """One `[name]` block of a cfg: its options as raw strings, in file order."""

    name: str
    options: dict[str, str]
    line: int

    def get_int(self, key: str, default: int | None = None) -> int:
        if key not in self.options:
            if default is None:
                raise KeyError(f"[{self.name}] at line {self.line}: missing {key!r}")
            return default
        return int(float(self.options[key]))

    def get_float(self, key: str, default: float | None = None) -> float:
        if key not in self.options:
            if default is None:
                raise KeyError(f"[{self.name}] at line {self.line}: missing {key!r}")
            return default
        return float(self.options[key])

    def get_str(self, key: str, default: str | None = None) -> str:
        if key not in self.options:
            if default is None:
                raise KeyError(f"[{self.name}] at line {self.line}: missing {key!r}")
            return default
        return self.options[key]

    def get_ints(self, key: str) -> list[int]:
        raw = self.get_str(key)
        return [int(item) for item in raw.split(",") if item != ""]


def parse_cfg_text(text: str) -> list[Section]:
    """Parses darknet cfg text.

    Like darknet's `read_cfg`, all whitespace inside a line is dropped, so `layers = -1, -3`
    reads as `layers=-1,-3`. Lines starting with `#` or `;` are comments; text after a `#`
    later in a line is ignored too.
    """
    sections: list[Section] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = "".join(raw.split())
        if not line or line[0] in "#;":
            continue
        line = line.split("#", 1)[0]
        if line.startswith("["):
            if not line.endswith("]"):
                raise ValueError(f"line {number}: malformed section header {raw!r}")
            sections.append(Section(line[1:-1].lower(), {}, number))
            continue
        if "=" not in line:
            raise ValueError(f"line {number}: expected key=value, got {raw!r}")
        if not sections:
            raise ValueError(f"line {number}: option {raw!r} before any [section]")
        key, value = line.split("=", 1)
        sections[-1].options[key] = value
    return sections


def parse_cfg(path: str | os.PathLike) -> list[Section]:
    return parse_cfg_text(pathlib.Path(path).read_text())


# --------------------------------------------------------------------------------------
# network planning: layer hyper-parameters and shapes
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Layer:
    """A layer with resolved hyper-parameters and its (h, w, c) input and output shapes."""

    index: int
    kind: str
    params: dict
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]


_CONV_UNSUPPORTED = ("stride_x", "stride_y", "dilation", "binary", "xnor", "share_index")
_KNOWN_ACTIVATIONS = ("linear", "leaky", "logistic", "relu", "mish", "swish", "tanh")


def _resolve(index: int, current: int) -> int:
    """darknet: a negative layer reference is relative to the current layer's index."""
    resolved = current + index if index < 0 else index
    if not 0 <= resolved < current:
        raise ValueError(f"layer {current}: reference {index} resolves to {resolved}")
    return resolved


def _check_activation(name: str, where: str) -> str:
    if name not in _KNOWN_ACTIVATIONS:
        raise NotImplementedError(f"{where}: activation {name!r} is not modelled")
    return name


def plan_network(
    sections: Sequence[Section], height: int, width: int, channels: int
) -> list[Layer]:
    """Resolves every layer after `[net]` and propagates shapes (h, w, c)."""
    if not sections or sections[0].name not in ("net", "network"):
        raise ValueError("a cfg must start with [net]")
    layers: list[Layer] = []
    shape = (height, width, channels)
    for index, sec in enumerate(sections[1:]):
        where = f"layer {index} [{sec.name}] (cfg line {sec.line})"
        h, w, c = shape
        if sec.name in ("convolutional", "conv"):
            for key in _CONV_UNSUPPORTED:
                if key in sec.options:
                    raise NotImplementedError(f"{where}: key {key!r} is not modelled")
            size = sec.get_int("size", 1)
            stride = sec.get_int("stride", 1)
            padding = sec.get_int("padding", 0)
            if sec.get_int("pad", 0):
                padding = size // 2
            groups = sec.get_int("groups", 1)
            filters = sec.get_int("filters", 1)
            if c % groups or filters % groups:
                raise ValueError(f"{where}: groups={groups} does not divide c={c}/n={filters}")
            params = dict(
                filters=filters,
                size=size,
                stride=stride,
                padding=padding,
                groups=groups,
                in_channels=c,
                batch_normalize=bool(sec.get_int("batch_normalize", 0)),
                activation=_check_activation(sec.get_str("activation", "logistic"), where),
            )
            out_h = (h + 2 * padding - size) // stride + 1
            out_w = (w + 2 * padding - size) // stride + 1
            out = (out_h, out_w, filters)
        elif sec.name in ("maxpool", "max"):
            for key in ("stride_x", "stride_y", "maxpool_depth", "antialiasing"):
                if key in sec.options:
                    raise NotImplementedError(f"{where}: key {key!r} is not modelled")
            stride = sec.get_int("stride", 1)
            size = sec.get_int("size", stride)
            padding = sec.get_int("padding", size - 1)
            params = dict(size=size, stride=stride, padding=padding)
            out = ((h + padding - size) // stride + 1, (w + padding - size) // stride + 1, c)
        elif sec.name == "upsample":
            stride = sec.get_int("stride", 2)
            if stride < 1:
                raise NotImplementedError(f"{where}: negative (downsampling) stride")
            params = dict(stride=stride, scale=sec.get_float("scale", 1.0))
            out = (h * stride, w * stride, c)
        elif sec.name == "route":
            sources = [_resolve(i, index) for i in sec.get_ints("layers")]
            groups = sec.get_int("groups", 1)
            group_id = sec.get_int("group_id", 0)
            shapes = [layers[s].out_shape for s in sources]
            if any(s[:2] != shapes[0][:2] for s in shapes):
                raise ValueError(f"{where}: spatial sizes differ: {shapes}")
            if any(s[2] % groups for s in shapes):
                raise ValueError(f"{where}: groups={groups} does not divide {shapes}")
            params = dict(layers=sources, groups=groups, group_id=group_id)
            out = (shapes[0][0], shapes[0][1], sum(s[2] // groups for s in shapes))
        elif sec.name == "shortcut":
            for key in ("weights_type", "weights_normalization"):
                if sec.get_str(key, "none") != "none":
                    raise NotImplementedError(f"{where}: weighted shortcut is not modelled")
            sources = [_resolve(i, index) for i in sec.get_ints("from")]
            for s in sources:
                # Different depths are darknet's partial residual (see _layer_forward).
                if layers[s].out_shape[:2] != shape[:2]:
                    raise NotImplementedError(
                        f"{where}: shortcut between shapes {layers[s].out_shape} and {shape}"
                    )
            activation = _check_activation(sec.get_str("activation", "linear"), where)
            params = dict(layers=sources, activation=activation)
            out = shape
        elif sec.name in ("avgpool", "avg"):
            params = {}
            out = (1, 1, c)
        elif sec.name in ("yolo", "region"):
            params = {}
            out = shape
        else:
            raise NotImplementedError(f"{where}: layer type [{sec.name}] is not modelled")
        layers.append(Layer(index, sec.name, params, shape, out))
        shape = out
    return layers


def _net_input_shape(sections: Sequence[Section]) -> tuple[int, int, int]:
    net = sections[0]
    return net.get_int("height", 416), net.get_int("width", 416), net.get_int("channels", 3)


def plan_cfg(cfg_path: str | os.PathLike, height: int | None = None, width: int | None = None):
    """`plan_network` for a cfg file, at the [net] size unless one is given."""
    sections = parse_cfg(cfg_path)
    net_h, net_w, net_c = _net_input_shape(sections)
    return plan_network(sections, height or net_h, width or net_w, net_c)


# --------------------------------------------------------------------------------------
# .weights files
# --------------------------------------------------------------------------------------


def _seen_dtype(major: int, minor: int) -> np.dtype:
    # parser.c::load_weights_upto
    if major * 10 + minor >= 2 and major < 1000 and minor < 1000:
        return SEEN_64
    return SEEN_32


def _conv_tensors(layer: Layer) -> list[tuple[str, tuple[int, ...]]]:
    """The tensors of one conv layer in file order, with their shapes."""
    p = layer.params
    n = p["filters"]
    tensors = [("biases", (n,))]
    if p["batch_normalize"]:
        tensors += [("scales", (n,)), ("rolling_mean", (n,)), ("rolling_variance", (n,))]
    tensors.append(("weights", (n, p["in_channels"] // p["groups"], p["size"], p["size"])))
    return tensors


def weights_layout(cfg_path: str | os.PathLike, major: int = 0, minor: int = 2):
    """[(layer index, tensor name, shape, start byte, end byte)] of a `.weights` file."""
    offset = 3 * HEADER_INT32.itemsize + _seen_dtype(major, minor).itemsize
    layout = []
    for layer in plan_cfg(cfg_path):
        if layer.kind not in ("convolutional", "conv"):
            continue
        for name, shape in _conv_tensors(layer):
            size = int(np.prod(shape)) * FLOAT32.itemsize
            layout.append((layer.index, name, shape, offset, offset + size))
            offset += size
    return layout


def describe_offset(cfg_path: str | os.PathLike, offset: int, major: int = 0, minor: int = 2):
    """Names the header field or tensor element that byte `offset` of a `.weights` belongs to."""
    header = 3 * HEADER_INT32.itemsize + _seen_dtype(major, minor).itemsize
    if offset < header:
        return f"header byte {offset}"
    for index, name, shape, start, end in weights_layout(cfg_path, major, minor):
        if start <= offset < end:
            flat = (offset - start) // FLOAT32.itemsize
            element = np.unravel_index(flat, shape)
            return f"layer {index} {name}{tuple(int(e) for e in element)} (shape {shape})"
    return f"byte {offset}, past the last tensor"


def write_random_weights(
    cfg_path: str | os.PathLike,
    weights_path: str | os.PathLike,
    seed: int,
    major: int = 0,
    minor: int = 2,
    revision: int = 0,
    seen: int = 0,
    gain: float = 0.9,
    calibration_size: int | None = 128,
    bn_scale: tuple[float, float] = (0.5, 1.0),
) -> int:
    """Writes a darknet `.weights` file with random parameters for `cfg_path`.

    Conv weights are N(0, gain**2 / fan_in), BN scales U(*bn_scale) (default U(0.5, 1)), BN
    biases and plain conv biases N(0, 0.1**2).

    Fixed BN statistics cannot keep a deep network alive: with rolling_mean ~ N(0, 0.1**2)
    and rolling_variance ~ U(0.5, 1.5) every conv+BN+activation shrinks the image-dependent
    part of the signal by about half, so after ~100 layers the heads see only biases (the
    two halves of a batch then differ by ~1e-10 of the output). A test against such
    weights would not notice a wrong input layout or a wrong skip connection. So, by
    default, the rolling statistics are calibrated the way training would leave them: two
    uniform-noise images of `calibration_size` pixels are run through the network while the
    weights are drawn, and each BN layer gets rolling_mean = mean + 0.1 * std * N(0, 1) and
    rolling_variance = var * U(0.5, 1.5) of its own pre-BN output. Every BN output is then
    of order one and strongly image-dependent at every depth. `calibration_size=None`
    gives the plain, uncalibrated rolling_mean ~ N(0, 0.1**2), rolling_variance ~
    U(0.5, 1.5).

    Returns the number of float32 values written after the header.
    """
    rng = np.random.default_rng(seed)
    sections = parse_cfg(cfg_path)
    net_h, net_w, net_c = _net_input_shape(sections)
    if calibration_size:
        layers = plan_network(sections, calibration_size, calibration_size, net_c)
        x = rng.uniform(0.0, 1.0, (2, calibration_size, calibration_size, net_c))
    else:
        layers = plan_network(sections, net_h, net_w, net_c)
        x = None
    chunks = [
        np.array([major, minor, revision], dtype=HEADER_INT32).tobytes(),
        np.array([seen], dtype=_seen_dtype(major, minor)).tobytes(),
    ]
    outputs: list[np.ndarray] = []
    count = 0
    for layer in layers:
        tensors = {}
        if layer.kind in ("convolutional", "conv"):
            shapes = dict(_conv_tensors(layer))
            n = layer.params["filters"]
            out_c, group_c, k, _ = shapes["weights"]
            tensors["weights"] = rng.normal(0.0, gain / np.sqrt(group_c * k * k), shapes["weights"])
            tensors["biases"] = rng.normal(0.0, 0.1, n)
            if layer.params["batch_normalize"]:
                tensors["scales"] = rng.uniform(*bn_scale, n)
                mean_noise = rng.normal(0.0, 0.1, n)
                var_factor = rng.uniform(0.5, 1.5, n)
                if x is None:
                    tensors["rolling_mean"] = mean_noise
                    tensors["rolling_variance"] = var_factor
                else:
                    p = layer.params
                    raw = conv2d(
                        x, _as_float32(tensors["weights"]), p["stride"], p["padding"], p["groups"]
                    )
                    mean = raw.mean(axis=(0, 1, 2))
                    var = raw.var(axis=(0, 1, 2)) + 1e-4 * raw.var() + 1e-12
                    tensors["rolling_mean"] = mean + mean_noise * np.sqrt(var)
                    tensors["rolling_variance"] = var * var_factor
            tensors = {name: _as_float32(tensors[name]) for name, _ in _conv_tensors(layer)}
            for name, shape in _conv_tensors(layer):
                chunks.append(tensors[name].astype(FLOAT32).reshape(shape).tobytes())
                count += tensors[name].size
        if x is not None:
            x = _layer_forward(layer, x, outputs, tensors)
            outputs.append(x)
    pathlib.Path(weights_path).write_bytes(b"".join(chunks))
    return count


def _as_float32(values: np.ndarray) -> np.ndarray:
    """Rounds to float32, as stored, and returns float64."""
    return np.asarray(values).astype(FLOAT32).astype(np.float64)


@dataclasses.dataclass
class Weights:
    major: int
    minor: int
    revision: int
    seen: int
    layers: dict[int, dict[str, np.ndarray]]  # conv layer index -> tensors (float64)


def read_weights(cfg_path: str | os.PathLike, weights_path: str | os.PathLike) -> Weights:
    """Reads a `.weights` file for `cfg_path`; it must hold exactly the cfg's tensors."""
    data = pathlib.Path(weights_path).read_bytes()
    major, minor, revision = (int(v) for v in np.frombuffer(data, HEADER_INT32, 3))
    seen_dtype = _seen_dtype(major, minor)
    offset = 3 * HEADER_INT32.itemsize
    seen = int(np.frombuffer(data, seen_dtype, 1, offset)[0])
    offset += seen_dtype.itemsize
    params: dict[int, dict[str, np.ndarray]] = {}
    for layer in plan_cfg(cfg_path):
        if layer.kind not in ("convolutional", "conv"):
            continue
        tensors = {}
        for name, shape in _conv_tensors(layer):
            count = int(np.prod(shape))
            if offset + count * FLOAT32.itemsize > len(data):
                raise ValueError(f"{weights_path}: ends inside layer {layer.index} {name}")
            values = np.frombuffer(data, FLOAT32, count, offset)
            tensors[name] = values.astype(np.float64).reshape(shape)
            offset += count * FLOAT32.itemsize
        params[layer.index] = tensors
    if offset != len(data):
        raise ValueError(f"{weights_path}: {len(data) - offset} bytes left after the last layer")
    return Weights(major, minor, revision, seen, params)


# --------------------------------------------------------------------------------------
# kernels (NHWC, float64)
# --------------------------------------------------------------------------------------


def softplus(x: np.ndarray, threshold: float = SOFTPLUS_THRESHOLD) -> np.ndarray:
    """activations.h::softplus_activate."""
    middle = np.log1p(np.exp(np.clip(x, -threshold, threshold)))
    return np.where(x > threshold, x, np.where(x < -threshold, np.exp(x), middle))


def logistic(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def activate(x: np.ndarray, name: str) -> np.ndarray:
    if name == "linear":
        return x
    if name == "leaky":
        return np.where(x > 0, x, 0.1 * x)
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "logistic":
        return logistic(x)
    if name == "tanh":
        return np.tanh(x)
    if name == "mish":
        return x * np.tanh(softplus(x))
    if name == "swish":
        return x * logistic(x)
    raise NotImplementedError(f"activation {name!r}")


def conv2d(x: np.ndarray, weights: np.ndarray, stride: int, padding: int, groups: int):
    """Cross-correlation with darknet's symmetric zero padding, via im2col and a matmul.

    x: [N, H, W, C]; weights: [O, C // groups, k, k] (darknet's layout). Returns
    [N, (H + 2p - k) // s + 1, (W + 2p - k) // s + 1, O].
    """
    n, h, w, c = x.shape
    out_c, group_c, k, k2 = weights.shape
    if k != k2 or group_c * groups != c:
        raise ValueError(f"conv weights {weights.shape} do not fit input {x.shape}")
    out_h = (h + 2 * padding - k) // stride + 1
    out_w = (w + 2 * padding - k) // stride + 1
    padded = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    # windows: [N, H', W', C, k, k], window axes last, matching the weights' [C, kh, kw].
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(1, 2))
    windows = windows[:, : (out_h - 1) * stride + 1 : stride, : (out_w - 1) * stride + 1 : stride]
    out_g = out_c // groups
    outputs = []
    for g in range(groups):
        cols = windows[..., g * group_c : (g + 1) * group_c, :, :]
        cols = cols.reshape(n * out_h * out_w, group_c * k * k)  # the im2col copy
        kernel = weights[g * out_g : (g + 1) * out_g].reshape(out_g, group_c * k * k)
        outputs.append(np.dot(cols, kernel.T))
    out = outputs[0] if groups == 1 else np.concatenate(outputs, axis=1)
    return out.reshape(n, out_h, out_w, out_c)


def maxpool2d(x: np.ndarray, size: int, stride: int, padding: int) -> np.ndarray:
    """maxpool_layer.c: window i starts at i * stride - padding // 2; outside is ignored."""
    n, h, w, c = x.shape
    out_h = (h + padding - size) // stride + 1
    out_w = (w + padding - size) // stride + 1
    before = padding // 2
    # pad generously with -inf so every window lies inside, then slice
    after_h = max(0, (out_h - 1) * stride + size - before - h)
    after_w = max(0, (out_w - 1) * stride + size - before - w)
    padded = np.pad(
        x, ((0, 0), (before, after_h), (before, after_w), (0, 0)), constant_values=-np.inf
    )
    windows = np.lib.stride_tricks.sliding_window_view(padded, (size, size), axis=(1, 2))
    windows = windows[:, : (out_h - 1) * stride + 1 : stride, : (out_w - 1) * stride + 1 : stride]
    return windows.max(axis=(-2, -1))


def upsample(x: np.ndarray, stride: int, scale: float = 1.0) -> np.ndarray:
    out = np.repeat(np.repeat(x, stride, axis=1), stride, axis=2)
    return out * scale if scale != 1.0 else out


# --------------------------------------------------------------------------------------
# forward pass
# --------------------------------------------------------------------------------------


def _layer_forward(
    layer: Layer, x: np.ndarray, outputs: Sequence[np.ndarray], tensors: dict[str, np.ndarray]
) -> np.ndarray:
    """One layer: `x` is the previous output, `outputs` all earlier outputs by index."""
    p = layer.params
    if layer.kind in ("convolutional", "conv"):
        y = conv2d(x, tensors["weights"], p["stride"], p["padding"], p["groups"])
        if p["batch_normalize"]:
            y = (y - tensors["rolling_mean"]) / np.sqrt(tensors["rolling_variance"] + BN_EPSILON)
            y = y * tensors["scales"] + tensors["biases"]
        else:
            y = y + tensors["biases"]
        y = activate(y, p["activation"])
    elif layer.kind in ("maxpool", "max"):
        y = maxpool2d(x, p["size"], p["stride"], p["padding"])
    elif layer.kind == "upsample":
        y = upsample(x, p["stride"], p["scale"])
    elif layer.kind == "route":
        parts = []
        for source in p["layers"]:
            src = outputs[source]
            chunk = src.shape[-1] // p["groups"]
            parts.append(src[..., p["group_id"] * chunk : (p["group_id"] + 1) * chunk])
        y = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
    elif layer.kind == "shortcut":
        # blas.c::shortcut_multilayer_cpu over darknet's flat [C, H, W] image: out[i] = in[i],
        # plus add[i] where i < the added layer's size (a shallower layer adds into the
        # leading channels only; the output has the previous layer's size).
        n, h, w, c = x.shape
        flat = x.transpose(0, 3, 1, 2).reshape(n, -1).copy()
        for source in p["layers"]:
            add = outputs[source].transpose(0, 3, 1, 2).reshape(n, -1)
            common = min(flat.shape[1], add.shape[1])
            flat[:, :common] += add[:, :common]
        y = activate(flat.reshape(n, c, h, w).transpose(0, 2, 3, 1), p["activation"])
    elif layer.kind in ("avgpool", "avg"):
        y = x.mean(axis=(1, 2), keepdims=True)  # avgpool_layer.c: the mean of each channel
    elif layer.kind in ("yolo", "region"):
        y = x
    else:  # plan_network has already refused it
        raise AssertionError(layer.kind)
    if y.shape[1:] != layer.out_shape:
        raise AssertionError(f"layer {layer.index}: {y.shape[1:]} != {layer.out_shape}")
    return y


def forward_all(
    cfg_path: str | os.PathLike, weights_path: str | os.PathLike, images: np.ndarray
) -> list[np.ndarray]:
    """Runs the network on NHWC RGB images in [0, 1]; returns every layer's output."""
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 4:
        raise ValueError(f"images must be [N, H, W, C], got {images.shape}")
    sections = parse_cfg(cfg_path)
    _, _, net_c = _net_input_shape(sections)
    if images.shape[-1] != net_c:
        raise ValueError(f"the cfg expects {net_c} channels, images have {images.shape[-1]}")
    layers = plan_network(sections, images.shape[1], images.shape[2], net_c)
    weights = read_weights(cfg_path, weights_path)
    outputs: list[np.ndarray] = []
    x = images
    for layer in layers:
        x = _layer_forward(layer, x, outputs, weights.layers.get(layer.index, {}))
        outputs.append(x)
    return outputs


def yolo_layer_indices(cfg_path: str | os.PathLike) -> list[int]:
    sections = parse_cfg(cfg_path)
    return [i for i, sec in enumerate(sections[1:]) if sec.name == "yolo"]


def reference_forward(
    cfg_path: str | os.PathLike, weights_path: str | os.PathLike, images: np.ndarray
) -> list[np.ndarray]:
    """For each [yolo] layer in cfg order, the output of the layer right before it.

    `images` is float [N, H, W, 3] RGB in [0, 1]; results are float64
    [N, H / stride, W / stride, filters].
    """
    outputs = forward_all(cfg_path, weights_path, images)
    return [outputs[i - 1] for i in yolo_layer_indices(cfg_path)]


# --------------------------------------------------------------------------------------
# test helpers
# --------------------------------------------------------------------------------------


def locate_reference_dir() -> pathlib.Path | None:
    """Where darknet's cfgs live: <repo>/../shared/reference, else $YOLOV4_REFERENCE_DIR."""
    candidates = [pathlib.Path(__file__).resolve().parents[2] / "shared" / "reference"]
    if os.environ.get("YOLOV4_REFERENCE_DIR"):
        candidates.append(pathlib.Path(os.environ["YOLOV4_REFERENCE_DIR"]))
    for candidate in candidates:
        if (candidate / "yolov4.cfg").is_file():
            return candidate
    return None


def relative_error(actual: np.ndarray, reference: np.ndarray) -> float:
    """max |actual - reference| / max |reference|."""
    actual = np.asarray(actual, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    return float(np.max(np.abs(actual - reference)) / np.max(np.abs(reference)))
