"""Read and write darknet `.cfg` network descriptions as layer specs."""

from __future__ import annotations

import dataclasses
import math
import os

from yolov4_jax import Error
from yolov4_jax.models import specs
from yolov4_jax.models.network import output_shapes


class CfgError(Error, ValueError):
    """A malformed or unsupported darknet cfg; the message names file, line and key."""


@dataclasses.dataclass
class _Section:
    kind: str
    line: int
    options: dict[str, tuple[str, int]]  # key -> (value, line)


def _read_sections(text: str, source: str) -> list[_Section]:
    sections: list[_Section] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise CfgError(f"{source}:{lineno}: section header {line!r} lacks ']'")
            sections.append(_Section(line[1:-1].strip().lower(), lineno, {}))
            continue
        if "=" not in line:
            raise CfgError(f"{source}:{lineno}: expected key=value, found {line!r}")
        if not sections:
            raise CfgError(f"{source}:{lineno}: option {line!r} before the first [section]")
        key, value = (p.strip() for p in line.split("=", 1))
        sections[-1].options[key] = (value, lineno)
    if not sections or sections[0].kind not in ("net", "network"):
        raise CfgError(f"{source}: the first section must be [net]")
    return sections


class _Options:
    """Typed access to one section's options; unknown keys are an error."""

    def __init__(self, section: _Section, index: int, source: str, allowed: set[str]):
        self.section, self.index, self.source = section, index, source
        unknown = set(section.options) - allowed
        if unknown:
            key = sorted(unknown)[0]
            raise CfgError(
                f"{self.where(key)}: key {key!r} is not supported in [{section.kind}] "
                f"(supported: {', '.join(sorted(allowed))})"
            )

    def where(self, key: str | None = None) -> str:
        line = self.section.options[key][1] if key in self.section.options else self.section.line
        if self.index < 0:
            return f"{self.source}:{line}: [{self.section.kind}]"
        return f"{self.source}:{line}: layer {self.index} [{self.section.kind}]"

    def get(self, key: str, default, parse=str, check=None):
        """The value of ``key`` parsed by ``parse``; ``check(value)`` returns what was expected
        when the value is out of range (else None). Every problem is a `CfgError` naming the
        file, line, section and key."""
        if key not in self.section.options:
            if default is _REQUIRED:
                raise CfgError(f"{self.where()}: missing required key {key!r}")
            return default
        value = self.section.options[key][0]
        try:
            parsed = parse(value)
        except (ValueError, OverflowError) as e:
            raise CfgError(f"{self.where(key)}: bad value {key}={value!r} ({e})") from None
        expected = check(parsed) if check is not None else None
        if expected:
            raise CfgError(f"{self.where(key)}: bad value {key}={value!r}: expected {expected}")
        return parsed

    def ints(self, key: str, default, check=None) -> tuple[int, ...]:
        return self.get(
            key, default, lambda v: tuple(int(x) for x in v.split(",") if x.strip()), check
        )

    def floats(self, key: str, default, check=None) -> tuple[float, ...]:
        return self.get(
            key, default, lambda v: tuple(float(x) for x in v.split(",") if x.strip()), check
        )


# Range checks for `_Options.get`: None when the value is fine, else what was expected.
def _at_least(low):
    return lambda v: None if math.isfinite(v) and v >= low else f"a number >= {low}"


def _within(low, high, high_open=False):
    def check(v):
        if math.isfinite(v) and low <= v and (v < high if high_open else v <= high):
            return None
        return f"a number in [{low}, {high}{')' if high_open else ']'}"

    return check


def _positive(v):
    return None if v > 0 and not math.isnan(v) else "a positive number"


def _flag(v):
    return None if v in (0, 1) else "0 or 1"


def _one_of(*values):
    return lambda v: None if v in values else f"one of {', '.join(values)}"


def _all(check):
    """A check of every element of a tuple (anchors, mask, layers)."""

    def each(values):
        for v in values:
            problem = check(v)
            if problem:
                return f"every value {problem}"
        return None

    return each


_BOX_LOSSES = ("mse", "iou", "giou", "diou", "ciou")  # yolov4_jax.detection.losses.BOX_LOSSES
_IOU_KINDS = ("iou", "giou", "diou", "ciou")  # yolov4_jax.detection.targets
_NMS_KINDS = ("default", "greedynms", "diounms")  # yolov4_jax.evaluation.prediction
# [yolo] keys and their ranges (darknet's parser.c::parse_yolo reads them; out of range, they
# mean nothing or break the loss).
_YOLO_CHECKS = {
    "classes": _at_least(1),
    "scale_x_y": _within(1.0, 4.0),
    "new_coords": _flag,
    "jitter": _within(0.0, 1.0, high_open=True),
    "ignore_thresh": _within(0.0, 1.0),
    "truth_thresh": _within(0.0, 1.0),
    "iou_thresh": _within(0.0, 1.0),
    "iou_thresh_kind": _one_of(*_IOU_KINDS),
    "iou_normalizer": _at_least(0.0),
    "obj_normalizer": _at_least(0.0),
    "cls_normalizer": _at_least(0.0),
    "delta_normalizer": _at_least(0.0),
    "iou_loss": _one_of(*_BOX_LOSSES),
    "nms_kind": _one_of(*_NMS_KINDS),
    "beta_nms": _within(0.0, 1.0),
    "max_delta": _positive,
    "objectness_smooth": _flag,
    "label_smooth_eps": _within(0.0, 1.0, high_open=True),
    "random": _at_least(0.0),
    "resize": lambda v: _positive(v) or _within(0.0, 100.0)(v),
}
# [net] keys the project reads, or that darknet's trainer does (the rest are kept as text).
_NET_CHECKS = {
    "width": (int, _at_least(1)),
    "height": (int, _at_least(1)),
    "channels": (int, _at_least(1)),
    "batch": (int, _at_least(1)),
    "subdivisions": (int, _at_least(1)),
    "max_batches": (int, _at_least(0)),
    "burn_in": (int, _at_least(0)),
    "learning_rate": (float, _positive),
    "momentum": (float, _within(0.0, 1.0)),
    "decay": (float, _at_least(0.0)),
    "letter_box": (int, _flag),
    "mosaic": (int, _flag),
    "flip": (int, _flag),
    "angle": (float, _within(-360.0, 360.0)),
    "saturation": (float, _positive),
    "exposure": (float, _positive),
    "hue": (float, _within(0.0, 1.0)),
}


_REQUIRED = object()
_YOLO_FIELDS = {f.name: f for f in dataclasses.fields(specs.Yolo)}


def _absolute(refs: tuple[int, ...], index: int, opts: _Options, key: str) -> tuple[int, ...]:
    out = tuple(r + index if r < 0 else r for r in refs)
    for r in out:
        if not 0 <= r < index:
            raise CfgError(f"{opts.where(key)}: {key} refers to layer {r}, outside 0..{index - 1}")
    return out


def _parse_layer(section: _Section, i: int, source: str) -> specs.Spec:
    kind = section.kind
    if kind in ("convolutional", "conv"):
        o = _Options(
            section,
            i,
            source,
            {
                "filters",
                "size",
                "stride",
                "pad",
                "padding",
                "groups",
                "batch_normalize",
                "activation",
            },
        )
        size = o.get("size", 1, int, _at_least(1))
        pad = o.get("pad", 0, int, _flag)
        padding = size // 2 if pad else o.get("padding", 0, int, _at_least(0))
        filters = o.get("filters", 1, int, _at_least(1))
        groups = o.get("groups", 1, int, _at_least(1))
        if filters % groups:
            raise CfgError(f"{o.where('groups')}: filters={filters} is not a multiple of groups")
        activation = o.get("activation", "logistic")
        if activation not in specs.ACTIVATIONS:
            raise CfgError(
                f"{o.where('activation')}: activation {activation!r} is not one of "
                f"{specs.ACTIVATIONS}"
            )
        return specs.Conv(
            filters=filters,
            size=size,
            stride=o.get("stride", 1, int, _at_least(1)),
            padding=padding,
            groups=groups,
            batch_normalize=bool(o.get("batch_normalize", 0, int, _flag)),
            activation=activation,
        )
    if kind in ("maxpool", "max"):
        o = _Options(section, i, source, {"size", "stride", "padding"})
        stride = o.get("stride", 1, int, _at_least(1))
        size = o.get("size", stride, int, _at_least(1))  # darknet: size defaults to stride
        return specs.MaxPool(size, stride, o.get("padding", size - 1, int, _at_least(0)))
    if kind == "upsample":
        o = _Options(section, i, source, {"stride"})
        return specs.Upsample(o.get("stride", 2, int, _at_least(1)))
    if kind == "route":
        o = _Options(section, i, source, {"layers", "groups", "group_id"})
        refs = _absolute(o.ints("layers", _REQUIRED), i, o, "layers")
        groups = o.get("groups", 1, int, _at_least(1))
        group_id = o.get("group_id", 0, int)
        if not 0 <= group_id < groups:
            raise CfgError(f"{o.where('group_id')}: group_id={group_id} not in 0..{groups - 1}")
        return specs.Route(refs, groups, group_id)
    if kind == "shortcut":
        o = _Options(
            section, i, source, {"from", "activation", "weights_type", "weights_normalization"}
        )
        return specs.Shortcut(
            _absolute(o.ints("from", _REQUIRED), i, o, "from"),
            o.get("activation", "linear", str, _one_of(*specs.ACTIVATIONS)),
            o.get("weights_type", "none", str, _one_of("none", "per_feature", "per_channel")),
            o.get("weights_normalization", "none", str, _one_of("none", "relu", "softmax")),
        )
    if kind == "sam":
        o = _Options(section, i, source, {"from"})
        return specs.Sam(_absolute(o.ints("from", _REQUIRED), i, o, "from")[0])
    if kind in ("dropout",):
        o = _Options(section, i, source, {"probability", "dropblock", "dropblock_size_abs"})
        # Plain dropout is DropBlock with 1x1 blocks.
        dropblock = o.get("dropblock", 0, int, _flag)
        size = o.get("dropblock_size_abs", 7, int, _at_least(1)) if dropblock else 1
        probability = o.get("probability", 0.2, float, _within(0.0, 1.0, high_open=True))
        return specs.DropBlock(probability, size)
    if kind in ("avgpool", "avg"):
        _Options(section, i, source, set())
        return specs.AvgPool()
    if kind in ("yolo", "region"):
        if kind == "region":
            raise CfgError(f"{source}:{section.line}: layer {i} [region] (YOLOv2) is not supported")
        # `max` (boxes per image) is a data-loader setting, read by the data config instead.
        o = _Options(section, i, source, set(_YOLO_FIELDS) | {"num", "max"})
        flat = o.floats("anchors", _REQUIRED, _all(_within(0.0, 1e5)))
        if len(flat) % 2 or not flat or 0.0 in flat:
            raise CfgError(
                f"{o.where('anchors')}: anchors needs positive (width, height) pixel pairs"
                + (" (it has an odd number of values)" if len(flat) % 2 else "")
            )
        anchors = tuple((flat[k], flat[k + 1]) for k in range(0, len(flat), 2))
        num = o.get("num", len(anchors), int)
        if num != len(anchors):
            raise CfgError(f"{o.where('num')}: num={num} but {len(anchors)} anchor pairs given")
        mask = o.ints("mask", tuple(range(num)))
        o.get("max", 0, int, _at_least(1))  # read by the data config; checked here
        if not mask or any(not 0 <= m < num for m in mask):
            raise CfgError(f"{o.where('mask')}: mask {mask} refers to anchors outside 0..{num - 1}")
        kwargs = {}
        for name, field in _YOLO_FIELDS.items():
            if name in ("mask", "anchors") or name not in section.options:
                continue
            check = _YOLO_CHECKS.get(name)
            if field.type in ("bool",):
                kwargs[name] = bool(o.get(name, 0, int, check))
            elif field.type in ("int",):
                kwargs[name] = o.get(name, 0, int, check)
            elif field.type in ("float",):
                kwargs[name] = o.get(name, 0.0, float, check)
            else:
                kwargs[name] = o.get(name, "", str, check)
        return specs.Yolo(mask=mask, anchors=anchors, **kwargs)
    raise CfgError(f"{source}:{section.line}: layer {i}: unsupported section [{kind}]")


def parse_cfg(path_or_text: str | os.PathLike, *, is_text: bool = False):
    """Parses a darknet cfg into (net options as a dict of strings, tuple of layer specs)."""
    if is_text:
        text, source = str(path_or_text), "<cfg>"
    else:
        source = os.fspath(path_or_text)
        try:
            with open(source, "rb") as f:
                raw = f.read()
        except OSError as e:
            raise CfgError(f"{source}: cannot read cfg ({e.strerror})") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise CfgError(
                f"{source}:{line}: not UTF-8 text (byte {raw[e.start]:#04x}); save the cfg as "
                "UTF-8 (or ASCII)"
            ) from None
    sections = _read_sections(text, source)
    net_options = _Options(sections[0], -1, source, set(sections[0].options))
    for key, (parse, check) in _NET_CHECKS.items():
        net_options.get(key, None, parse, check)
    net = {k: v for k, (v, _) in sections[0].options.items()}
    layer_specs = tuple(_parse_layer(s, i, source) for i, s in enumerate(sections[1:]))
    _check_shapes(net, layer_specs, sections[1:], source)
    for i, s in enumerate(layer_specs):
        if isinstance(s, specs.Yolo):
            head_in = layer_specs[i - 1] if i else None
            if not isinstance(head_in, specs.Conv):
                raise CfgError(f"{source}: layer {i} [yolo] must follow a [convolutional]")
            expected = len(s.mask) * (5 + s.classes)
            if head_in.filters != expected:
                raise CfgError(
                    f"{source}: layer {i - 1} [convolutional] before [yolo] has filters="
                    f"{head_in.filters}, expected len(mask) * (5 + classes) = {expected}"
                )
    return net, layer_specs


def _check_shapes(net: dict[str, str], layer_specs, sections, source: str) -> None:
    """Every layer has an input it can take at the [net] size: equal sizes where outputs meet,
    channels divisible by the groups, no layer shrunk to nothing."""
    height, width = int(net.get("height", 416)), int(net.get("width", 416))
    channels = int(net.get("channels", 3))
    try:
        shapes = output_shapes(layer_specs, height, width, channels)
    except ValueError as e:
        i = int(str(e).split()[1]) if str(e).startswith("layer ") else 0
        raise CfgError(f"{source}:{sections[i].line}: {e}") from None
    for i, (s, (h, w, c)) in enumerate(zip(layer_specs, shapes, strict=True)):
        where = f"{source}:{sections[i].line}: layer {i} [{sections[i].kind}]"
        c_in = shapes[i - 1][2] if i else channels
        if isinstance(s, specs.Conv) and c_in % s.groups:
            raise CfgError(f"{where}: groups={s.groups} does not divide its {c_in} input channels")
        if isinstance(s, specs.Route):
            for j in s.layers:
                if shapes[j][2] % s.groups:
                    raise CfgError(
                        f"{where}: groups={s.groups} does not divide layer {j}'s "
                        f"{shapes[j][2]} channels"
                    )
        if h < 1 or w < 1 or c < 1:
            raise CfgError(
                f"{where}: the output is empty ({h}x{w}x{c}) at the [net] size {height}x{width}; "
                "check size, stride and padding"
            )


def _fmt(v) -> str:
    if isinstance(v, bool):
        return str(int(v))
    if isinstance(v, float):
        return f"{v:g}" if math.isfinite(v) else ("1e30" if v > 0 else "-1e30")
    return str(v)


def format_cfg(net: dict[str, str], layer_specs) -> str:
    """Writes layer specs (and [net] options) as darknet cfg text."""
    out = ["[net]"] + [f"{k}={v}" for k, v in net.items()]
    for i, s in enumerate(layer_specs):
        rel = lambda refs, i=i: ",".join(str(r - i) for r in refs)  # noqa: E731
        if isinstance(s, specs.Conv):
            out += ["", "[convolutional]"]
            if s.batch_normalize:
                out.append("batch_normalize=1")
            out += [f"filters={s.filters}", f"size={s.size}", f"stride={s.stride}"]
            out.append(
                "pad=1" if s.padding == s.size // 2 and s.size > 1 else f"padding={s.padding}"
            )
            if s.groups != 1:
                out.append(f"groups={s.groups}")
            out.append(f"activation={s.activation}")
        elif isinstance(s, specs.MaxPool):
            out += ["", "[maxpool]", f"size={s.size}", f"stride={s.stride}"]
            if s.padding != s.size - 1:
                out.append(f"padding={s.padding}")
        elif isinstance(s, specs.Upsample):
            out += ["", "[upsample]", f"stride={s.stride}"]
        elif isinstance(s, specs.Route):
            out += ["", "[route]", f"layers={rel(s.layers)}"]
            if s.groups != 1:
                out += [f"groups={s.groups}", f"group_id={s.group_id}"]
        elif isinstance(s, specs.Shortcut):
            out += ["", "[shortcut]", f"from={rel(s.layers)}", f"activation={s.activation}"]
            if s.weights_type != "none":
                out += [
                    f"weights_type={s.weights_type}",
                    f"weights_normalization={s.weights_normalization}",
                ]
        elif isinstance(s, specs.Sam):
            out += ["", "[sam]", f"from={rel((s.layer,))}"]
        elif isinstance(s, specs.DropBlock):
            out += ["", "[dropout]", f"probability={_fmt(s.probability)}"]
            if s.block_size > 1:
                out += ["dropblock=1", f"dropblock_size_abs={s.block_size}"]
        elif isinstance(s, specs.AvgPool):
            out += ["", "[avgpool]"]
        elif isinstance(s, specs.Yolo):
            out += ["", "[yolo]", "mask=" + ",".join(map(str, s.mask))]
            out.append("anchors=" + ", ".join(f"{_fmt(w)},{_fmt(h)}" for w, h in s.anchors))
            out.append(f"num={s.num}")
            for name, field in _YOLO_FIELDS.items():
                if name in ("mask", "anchors"):
                    continue
                value = getattr(s, name)
                if name == "classes" or value != field.default:
                    out.append(f"{name}={_fmt(value)}")
        else:
            raise CfgError(f"layer {i}: {type(s).__name__} has no darknet cfg equivalent")
    return "\n".join(out) + "\n"
