"""The one place where a config becomes a model: `create_model(config.model)`."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import ml_collections

from yolov4_jax import ConfigError, darknet
from yolov4_jax.models import csp, cspresnext, tiny, yolov4
from yolov4_jax.models import layers as layers_lib
from yolov4_jax.models.network import Network
from yolov4_jax.ops import cpu_gemm

VARIANTS = ("yolov4", "yolov4_tiny", "yolov4_csp", "cspdarknet53", "cspresnext50", "cfg")
# Classifiers (backbone pretraining, config.task == "classification").
CLASSIFIERS = ("cspdarknet53", "cspresnext50")
_CLASSIFIER_BUILDERS = {
    "cspdarknet53": yolov4.cspdarknet53_classifier_layers,
    "cspresnext50": cspresnext.cspresnext50_classifier_layers,
}


def _head_options(model_config: ml_collections.ConfigDict) -> dict:
    return dict(model_config.get("head_options", {}) or {})


# Ablation switches only the yolov4 builder takes, with their configs/base.py defaults.
_YOLOV4_SWITCHES = {
    "activation": "mish",
    "neck_activation": "leaky",
    "residual_fusion": "add",
    "neck": "pan",
    "spp": True,
    "attention": "none",
    "fusion": "concat",
    "dropblock": 0.0,
}


# The switches the classifier takes (its backbone's); the others concern the detector's neck.
_CLASSIFIER_SWITCHES = ("activation", "residual_fusion", "dropblock")


def _check_switches(c: ml_collections.ConfigDict) -> None:
    """A switch the variant does not take is an error, never silently ignored."""
    changed = [k for k, v in _YOLOV4_SWITCHES.items() if c.get(k, v) != v]
    if c.name == "cfg":
        changed += [k for k in ("width", "depth") if c.get(k, 1.0) != 1.0]
        changed += ["anchors"] * bool(c.anchors) + ["head_options"] * bool(_head_options(c))
        if changed:
            raise ConfigError(
                f"config.model.{', config.model.'.join(changed)} set, but model.name=cfg builds "
                f"{c.cfg_path or 'the cfg file'} exactly as written and would ignore them; edit "
                "the cfg instead, or use config.model.name=yolov4 for architecture ablations"
            )
        return
    if c.name in CLASSIFIERS:
        changed = [k for k in changed if k not in _CLASSIFIER_SWITCHES]
        if changed or _head_options(c) or c.anchors:
            extra = ["head_options"] * bool(_head_options(c)) + ["anchors"] * bool(c.anchors)
            raise ConfigError(
                f"config.model.{', config.model.'.join(changed + extra)} set, but the "
                f"{c.name} classifier has no neck or heads; it takes only "
                f"{', '.join(_CLASSIFIER_SWITCHES)}, width and depth"
            )
        return
    if c.name == "yolov4_tiny" and c.get("depth", 1.0) != 1.0:
        changed.append("depth")
    if changed:
        raise ConfigError(
            f"config.model.{', config.model.'.join(changed)} set, but {c.name} follows its "
            "darknet cfg and does not take these switches; use config.model.name=yolov4 "
            "(with width/depth multipliers) for architecture ablations"
        )


def model_layers(model_config: ml_collections.ConfigDict, num_classes: int | None = None):
    """The layer specs of `config.model`; `num_classes` (from the dataset) overrides it."""
    c = model_config
    classes = int(num_classes if num_classes is not None else c.num_classes)
    if c.name in ("yolov4_tiny", "yolov4_csp", *CLASSIFIERS):
        _check_switches(c)
    if c.name in CLASSIFIERS:
        extra = {}
        if c.get("residual_fusion", "add") != "add":
            if c.name != "cspdarknet53":
                raise ConfigError(
                    f"config.model.residual_fusion={c.residual_fusion!r}: only cspdarknet53 "
                    f"takes it, not {c.name}"
                )
            extra["residual_fusion"] = c.residual_fusion
        return _CLASSIFIER_BUILDERS[c.name](
            classes,
            **extra,
            activation=c.activation,
            dropblock_probability=c.dropblock,
            dropblock_size=c.dropblock_size,
            width=c.width,
            depth=c.depth,
        )
    anchors = tuple(tuple(a) for a in c.anchors) if c.anchors else None
    common = {"num_classes": classes}
    if anchors:
        # Custom anchors (for example from `python -m yolov4_jax.anchors`) are split evenly over
        # the heads, smallest anchors to the finest head.
        heads = 2 if c.name == "yolov4_tiny" else 3
        if len(anchors) % heads:
            raise ConfigError(
                f"config.model.anchors: {len(anchors)} anchors do not split evenly over "
                f"the {heads} heads of {c.name}"
            )
        per = len(anchors) // heads
        masks = tuple(tuple(range(h * per, (h + 1) * per)) for h in range(heads))
        # yolov4-tiny lists its stride-32 head first.
        common.update(anchors=anchors, masks=masks[::-1] if heads == 2 else masks)
    if c.name == "yolov4":
        return yolov4.yolov4_layers(
            **common,
            backbone_activation=c.activation,
            neck_activation=c.get("neck_activation", "leaky"),
            residual_fusion=c.get("residual_fusion", "add"),
            neck=c.neck,
            use_spp=c.spp,
            attention=c.attention,
            fusion=c.fusion,
            dropblock_probability=c.dropblock,
            dropblock_size=c.dropblock_size,
            width=c.width,
            depth=c.depth,
            head_options=_head_options(c) or None,
        )
    if c.name == "yolov4_tiny":
        return tiny.yolov4_tiny_layers(
            **common, width=c.width, head_options=_head_options(c) or None
        )
    if c.name == "yolov4_csp":
        return csp.yolov4_csp_layers(
            **common, width=c.width, depth=c.depth, head_options=_head_options(c) or None
        )
    raise ConfigError(f"config.model.name must be one of {VARIANTS}, got {c.name!r}")


def create_model(model_config: ml_collections.ConfigDict, num_classes: int | None = None):
    """A `Network` for `config.model` (a darknet cfg file when `name == "cfg"`).

    A bfloat16 model on a CPU backend logs what it was measured to cost on this kind of CPU
    (`ops.cpu_gemm.bf16_advice`): bf16 is fast there only through oneMKL on AMX.
    """
    dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[model_config.dtype]
    if model_config.dtype == "bfloat16" and jax.default_backend() == "cpu":
        advice = cpu_gemm.bf16_advice(model_config.conv_algorithm)
        if advice:
            logging.warning("config.model.dtype=bfloat16: %s", advice)
    if model_config.conv_gradients not in layers_lib.CONV_GRADIENTS:
        raise ConfigError(
            f"config.model.conv_gradients must be one of {layers_lib.CONV_GRADIENTS}, "
            f"got {model_config.conv_gradients!r}"
        )
    if model_config.conv_algorithm not in layers_lib.CONV_ALGORITHMS:
        raise ConfigError(
            f"config.model.conv_algorithm must be one of {layers_lib.CONV_ALGORITHMS}, "
            f"got {model_config.conv_algorithm!r}"
        )
    if model_config.name == "cfg":
        _check_switches(model_config)
        return darknet.model_from_cfg(
            model_config.cfg_path,
            bn_momentum=model_config.bn_momentum,
            dtype=dtype,
            conv_gradients=model_config.conv_gradients,
            conv_algorithm=model_config.conv_algorithm,
        )
    layers = model_layers(model_config, num_classes)
    return Network(
        layers,
        bn_momentum=model_config.bn_momentum,
        dtype=dtype,
        conv_gradients=model_config.conv_gradients,
        conv_algorithm=model_config.conv_algorithm,
    )
