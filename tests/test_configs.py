"""Every config file loads, has every base field, and builds its model and loss options."""

from __future__ import annotations

import glob
import importlib
import os

import jax
import jax.numpy as jnp
import pytest

from configs import base
from yolov4_jax.data import pipeline
from yolov4_jax.detection import losses
from yolov4_jax.models import factory, specs

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs")
NAMES = sorted(
    os.path.basename(p)[:-3]
    for p in glob.glob(os.path.join(CONFIG_DIR, "*.py"))
    if not os.path.basename(p).startswith("_")
)


def _flat_keys(config, prefix=""):
    keys = set()
    for k, v in config.items():
        if hasattr(v, "items") and k not in ("head_options",):
            keys |= _flat_keys(v, f"{prefix}{k}.")
        else:
            keys.add(prefix + k)
    return keys


@pytest.mark.parametrize("name", NAMES)
def test_config_builds(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    assert _flat_keys(config) == _flat_keys(base.get_config()), "fields must come from base.py"
    losses.loss_options(config.loss)
    model = factory.create_model(config.model, num_classes=5)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    assert "params" in shapes
    assert config.data.batch_size % config.optim.subdivisions == 0


def test_unknown_field_is_an_error():
    config = base.get_config()
    config.lock()  # as `--config` (config_flags locks the config before applying overrides)
    with pytest.raises(AttributeError):
        config.optim.learning_rat = 0.1  # noqa: B018 - a typo must not pass silently
    with pytest.raises(KeyError):
        config.update_from_flattened_dict({"loss.box_los": "giou"})


# config field -> (darknet [net] key, parser) for the recipe the COCO configs reproduce.
NET_KEYS = {
    "data.batch_size": ("batch", int),
    "optim.subdivisions": ("subdivisions", int),
    "data.image_size": ("width", int),
    "optim.momentum": ("momentum", float),
    "optim.weight_decay": ("decay", float),
    "optim.learning_rate": ("learning_rate", float),
    "optim.burn_in": ("burn_in", int),
    "optim.max_batches": ("max_batches", int),
    "optim.schedule": ("policy", str),
    "optim.steps": ("steps", lambda v: tuple(int(s) for s in v.split(","))),
    "data.saturation": ("saturation", float),
    "data.exposure": ("exposure", float),
    "data.hue": ("hue", float),
    "data.mosaic": ("mosaic", lambda v: bool(int(v))),
}


@pytest.mark.parametrize(
    ("name", "cfg"), [("yolov4_coco", "yolov4.cfg"), ("yolov4_tiny_coco", "yolov4-tiny.cfg")]
)
def test_coco_configs_follow_darknets_cfg(name, cfg):
    import darknet_reference

    from yolov4_jax import darknet

    folder = darknet_reference.locate_reference_dir()
    if folder is None:
        pytest.skip("darknet's cfgs not available")
    net, layers = darknet.parse_cfg(folder / cfg)
    net = dict(net)
    config = importlib.import_module(f"configs.{name}").get_config()
    for field, (key, parse) in NET_KEYS.items():
        group, attr = field.split(".")
        want = parse(str(net.get(key, "0")).strip())
        assert config[group][attr] == want, f"{name}: config.{field} vs {cfg} {key}={want}"
    heads = [s for s in layers if isinstance(s, specs.Yolo)]
    assert config.data.random_shapes == bool(heads[-1].random)  # darknet: the last [yolo]
    # jitter and resize follow the model's last [yolo] head, whose values are the cfg's.
    ours = [s for s in factory.model_layers(config.model, 80) if isinstance(s, specs.Yolo)]
    resolved = pipeline.with_head_augmentation(config, ours)
    assert (resolved.data.jitter, resolved.data.resize) == (heads[-1].jitter, heads[-1].resize)
