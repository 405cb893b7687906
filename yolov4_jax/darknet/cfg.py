"""Read and write darknet `.cfg` network descriptions as layer specs."""

from __future__ import annotations

import dataclasses
import math
import os

from yolov4_jax.models import specs


class CfgError(ValueError):
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
        return f"{self.source}:{line}: layer {self.index} [{self.section.kind}]"

    def get(self, key: str, default, parse=str):
        if key not in self.section.options:
            if default is _REQUIRED:
                raise CfgError(f"{self.where()}: missing required key {key!r}")
            return default
        value = self.section.options[key][0]
        try:
            return parse(value)
        except ValueError as e:
            raise CfgError(f"{self.where(key)}: bad value {key}={value!r} ({e})") from None

    def ints(self, key: str, default) -> tuple[int, ...]:
        return self.get(key, default, lambda v: tuple(int(x) for x in v.split(",") if x.strip()))

    def floats(self, key: str, default) -> tuple[float, ...]:
        return self.get(key, default, lambda v: tuple(float(x) for x in v.split(",") if x.strip()))


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
        size = o.get("size", 1, int)
        padding = size // 2 if o.get("pad", 0, int) else o.get("padding", 0, int)
        activation = o.get("activation", "logistic")
        if activation not in specs.ACTIVATIONS:
            raise CfgError(
                f"{o.where('activation')}: activation {activation!r} is not one of "
                f"{specs.ACTIVATIONS}"
            )
        return specs.Conv(
            filters=o.get("filters", 1, int),
            size=size,
            stride=o.get("stride", 1, int),
            padding=padding,
            groups=o.get("groups", 1, int),
            batch_normalize=bool(o.get("batch_normalize", 0, int)),
            activation=activation,
        )
    if kind in ("maxpool", "max"):
        o = _Options(section, i, source, {"size", "stride", "padding"})
        stride = o.get("stride", 1, int)
        size = o.get("size", stride, int)  # darknet: size defaults to stride
        return specs.MaxPool(size, stride, o.get("padding", size - 1, int))
    if kind == "upsample":
        o = _Options(section, i, source, {"stride"})
        return specs.Upsample(o.get("stride", 2, int))
    if kind == "route":
        o = _Options(section, i, source, {"layers", "groups", "group_id"})
        refs = _absolute(o.ints("layers", _REQUIRED), i, o, "layers")
        groups = o.get("groups", 1, int)
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
            o.get("activation", "linear"),
            o.get("weights_type", "none"),
            o.get("weights_normalization", "none"),
        )
    if kind == "sam":
        o = _Options(section, i, source, {"from"})
        return specs.Sam(_absolute(o.ints("from", _REQUIRED), i, o, "from")[0])
    if kind in ("dropout",):
        o = _Options(section, i, source, {"probability", "dropblock", "dropblock_size_abs"})
        # Plain dropout is DropBlock with 1x1 blocks.
        size = o.get("dropblock_size_abs", 7, int) if o.get("dropblock", 0, int) else 1
        return specs.DropBlock(o.get("probability", 0.2, float), size)
    if kind in ("avgpool", "avg"):
        _Options(section, i, source, set())
        return specs.AvgPool()
    if kind in ("yolo", "region"):
        if kind == "region":
            raise CfgError(f"{source}:{section.line}: layer {i} [region] (YOLOv2) is not supported")
        # `max` (boxes per image) is a data-loader setting, read by the data config instead.
        o = _Options(section, i, source, set(_YOLO_FIELDS) | {"num", "max"})
        flat = o.floats("anchors", _REQUIRED)
        if len(flat) % 2:
            raise CfgError(f"{o.where('anchors')}: anchors has an odd number of values")
        anchors = tuple((flat[k], flat[k + 1]) for k in range(0, len(flat), 2))
        num = o.get("num", len(anchors), int)
        if num != len(anchors):
            raise CfgError(f"{o.where('num')}: num={num} but {len(anchors)} anchor pairs given")
        mask = o.ints("mask", tuple(range(num)))
        if any(not 0 <= m < num for m in mask):
            raise CfgError(f"{o.where('mask')}: mask {mask} refers to anchors outside 0..{num - 1}")
        kwargs = {}
        for name, field in _YOLO_FIELDS.items():
            if name in ("mask", "anchors") or name not in section.options:
                continue
            if field.type in ("bool",):
                kwargs[name] = bool(o.get(name, 0, int))
            elif field.type in ("int",):
                kwargs[name] = o.get(name, 0, int)
            elif field.type in ("float",):
                kwargs[name] = o.get(name, 0.0, float)
            else:
                kwargs[name] = o.get(name, "")
        return specs.Yolo(mask=mask, anchors=anchors, **kwargs)
    raise CfgError(f"{source}:{section.line}: layer {i}: unsupported section [{kind}]")


def parse_cfg(path_or_text: str | os.PathLike, *, is_text: bool = False):
    """Parses a darknet cfg into (net options as a dict of strings, tuple of layer specs)."""
    if is_text:
        text, source = str(path_or_text), "<cfg>"
    else:
        source = os.fspath(path_or_text)
        try:
            with open(source, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise CfgError(f"{source}: cannot read cfg ({e.strerror})") from None
    sections = _read_sections(text, source)
    net = {k: v for k, (v, _) in sections[0].options.items()}
    layer_specs = tuple(_parse_layer(s, i, source) for i, s in enumerate(sections[1:]))
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
