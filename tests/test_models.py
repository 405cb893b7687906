"""Output shapes of every variant and architecture switch, at tiny widths.

Shapes come from `jax.eval_shape` (no compilation); a few combinations also run for real.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import base
from yolov4_jax import darknet
from yolov4_jax.models import (
    Network,
    builder,
    check_input_size,
    cspresnext,
    factory,
    output_shapes,
    specs,
)
from yolov4_jax.models import layers as layers_lib

SIZE = 64


def _config(**overrides):
    config = base.get_config().model
    config.width = 0.0625
    config.depth = 1.0 if overrides.get("name") == "yolov4_tiny" else 0.34  # tiny has no depth
    config.num_classes = 3
    config.update(overrides)
    return config


def _shapes(model: Network, size: int = SIZE, train: bool = False):
    images = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    rngs = {"params": jax.random.key(0), "dropblock": jax.random.key(1)}
    variables = jax.eval_shape(model.init, rngs, images)
    out, _ = jax.eval_shape(
        lambda v, x: model.apply(
            v, x, train=train, rngs={"dropblock": jax.random.key(2)}, mutable=["batch_stats"]
        ),
        variables,
        images,
    )
    return [o.shape for o in out], variables


def _expected(model: Network, size: int = SIZE):
    return [
        (2, size // stride, size // stride, len(h.mask) * (5 + h.classes))
        for h, stride in zip(model.heads, _strides(model), strict=True)
    ]


def _strides(model: Network):
    heads = [i for i, s in enumerate(model.layers) if isinstance(s, specs.Yolo)]
    shapes = output_shapes(model.layers, SIZE, SIZE)
    return [SIZE // shapes[i][0] for i in heads]


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"activation": "leaky"},
        {"activation": "swish"},
        {"activation": "relu"},
        {"neck": "fpn"},
        {"spp": False},
        {"attention": "sam"},
        {"attention": "cbam"},
        {"neck_activation": "mish"},
        {"residual_fusion": "weighted"},
        {"fusion": "add"},
        {"fusion": "weighted"},
        {"dropblock": 0.1, "dropblock_size": 3},
        {"width": 0.125, "depth": 0.67},
        {"num_classes": 7},
        {"anchors": ((10, 10), (20, 20), (40, 40), (60, 60), (80, 80), (100, 100))},
        {"name": "yolov4_tiny"},
        {"name": "yolov4_csp"},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items())[:40] or "default",
)
def test_variant_shapes(overrides):
    model = factory.create_model(_config(**overrides))
    got, variables = _shapes(model, train=True)
    assert got == _expected(model)
    strides = _strides(model)
    tiny = overrides.get("name") == "yolov4_tiny"
    assert strides == ([32, 16] if tiny else [8, 16, 32])
    if overrides.get("fusion") == "weighted":
        fused = [k for k, v in variables["params"].items() if "weights" in v]
        assert fused, "weighted fusion has learned weights"


def test_sam_features_feed_the_bottom_up_path():
    """As yolov4-sam-mish-csp-reorg-bfm.cfg: the stride-2 convs of PAN's bottom-up path read
    the attended features of the head below, not the features before [sam]."""
    layers = factory.model_layers(_config(attention="sam"))
    down = [i for i, s in enumerate(layers) if isinstance(s, specs.Conv) and s.stride == 2][-2:]
    for i in down:
        route = layers[i - 1]
        assert isinstance(route, specs.Route) and len(route.layers) == 1
        assert isinstance(layers[route.layers[0]], specs.Sam)
    # And each [yolo] head's 3x3 conv reads a [sam] output too.
    heads = [i for i, s in enumerate(layers) if isinstance(s, specs.Yolo)]
    for i in heads:
        source = i - 3
        if isinstance(layers[source], specs.Route):
            source = layers[source].layers[0]
        assert isinstance(layers[source], specs.Sam), i


def test_channel_attention_is_cbams_equation():
    """Woo et al. 2018, eq. 2: x * sigmoid(MLP(avg) + MLP(max)), the MLP shared, by hand."""
    layer = layers_lib.ChannelAttention(reduction=2)
    x = jax.random.normal(jax.random.key(0), (2, 5, 4, 6))
    variables = layer.init(jax.random.key(1), x)
    p = jax.tree.map(np.asarray, variables["params"])
    xn = np.asarray(x, np.float64)

    def mlp(v):
        hidden = np.maximum(v @ p["fc1"]["kernel"] + p["fc1"]["bias"], 0.0)
        return hidden @ p["fc2"]["kernel"] + p["fc2"]["bias"]

    scores = mlp(xn.mean(axis=(1, 2))) + mlp(xn.max(axis=(1, 2)))  # [N, C]
    want = xn / (1 + np.exp(-scores))[:, None, None, :]
    np.testing.assert_allclose(layer.apply(variables, x), want, rtol=1e-5, atol=1e-6)
    assert p["fc1"]["kernel"].shape == (6, 3)


def _count(layers, kind, **fields) -> int:
    return sum(
        isinstance(s, kind) and all(getattr(s, k) == v for k, v in fields.items()) for s in layers
    )


def test_each_switch_changes_the_layers_it_names():
    """Shapes alone would not notice an ignored switch: check the layer specs themselves."""

    def layers(**overrides):
        return factory.model_layers(_config(**overrides))

    default = layers()
    convs = [s for s in default if isinstance(s, specs.Conv) and s.batch_normalize]
    assert {s.activation for s in convs} == {"mish", "leaky"}  # backbone mish, neck leaky
    for activation in ("leaky", "swish", "relu"):
        got = {s.activation for s in layers(activation=activation) if isinstance(s, specs.Conv)}
        assert "mish" not in got and activation in got
    # SPP: max-pools 5, 9, 13 at stride 1 (darknet padding size - 1), only with spp on.
    pools = [(s.size, s.stride, s.padding) for s in default if isinstance(s, specs.MaxPool)]
    assert pools == [(5, 1, 4), (9, 1, 8), (13, 1, 12)]
    assert _count(layers(spp=False), specs.MaxPool) == 0
    # PAN adds a bottom-up path: two stride-2 convs after the backbone's five.
    assert _count(default, specs.Conv, stride=2) == 7
    assert _count(layers(neck="fpn"), specs.Conv, stride=2) == 5
    # Mish in the neck and heads too: every BN conv is then mish.
    mish_neck = layers(neck_activation="mish")
    assert {s.activation for s in mish_neck if isinstance(s, specs.Conv) and s.batch_normalize} == {
        "mish"
    }
    # MiWRC in the backbone: each residual block's [shortcut] gets per-feature ReLU weights.
    residual = layers(residual_fusion="weighted")
    plain = _count(default, specs.Shortcut)
    assert plain > 0 and _count(residual, specs.Shortcut) == plain
    assert _count(residual, specs.Shortcut, weights_type="per_feature") == plain
    assert len(residual) == len(default)
    # Attention: none by default; SAM is darknet's [sam], one per head; CBAM channel then
    # spatial attention, one pair per head.
    assert _count(default, specs.Sam) == _count(default, specs.SpatialAttention) == 0
    assert _count(layers(attention="sam"), specs.Sam) == 3
    cbam = layers(attention="cbam")
    assert _count(cbam, specs.SpatialAttention) == _count(cbam, specs.ChannelAttention) == 3
    pairs = [i for i, s in enumerate(cbam) if isinstance(s, specs.SpatialAttention)]
    assert all(isinstance(cbam[i - 1], specs.ChannelAttention) for i in pairs)
    # Fusion of neck inputs: four concatenations become (weighted) additions.
    assert _count(default, specs.Shortcut, weights_type="per_feature") == 0
    assert _count(layers(fusion="add"), specs.Shortcut) == _count(default, specs.Shortcut) + 4
    weighted = layers(fusion="weighted")
    assert _count(weighted, specs.Shortcut, weights_type="per_feature") == 4
    assert _count(layers(fusion="add"), specs.Route) == _count(default, specs.Route) - 4
    assert _count(default, specs.DropBlock) == 0
    assert _count(layers(dropblock=0.1, dropblock_size=5), specs.DropBlock, block_size=5) > 0

    # Width scales the filters; depth the number of residual blocks.
    def filters(layer_list):
        return [s.filters for s in layer_list if isinstance(s, specs.Conv) and s.batch_normalize]

    assert filters(layers(width=0.5)) == [2 * f for f in filters(layers(width=0.25))]
    assert _count(layers(depth=1.0), specs.Shortcut) > _count(default, specs.Shortcut)


def test_strides_and_heads_of_full_variants():
    for name, heads, strides in [
        ("yolov4", 3, [8, 16, 32]),
        ("yolov4_tiny", 2, [32, 16]),  # darknet's order in yolov4-tiny.cfg
        ("yolov4_csp", 3, [8, 16, 32]),
    ]:
        model = factory.create_model(_config(name=name, width=1.0, depth=1.0, num_classes=80))
        assert len(model.heads) == heads
        assert _strides(model) == strides
        assert all(len(h.mask) * (5 + h.classes) == 255 for h in model.heads)


def test_anchor_count_must_match_masks():
    with pytest.raises(ValueError, match="anchors"):
        factory.model_layers(_config(anchors=((10, 10), (20, 20))))
    with pytest.raises(ValueError, match="anchors"):
        factory.model_layers(_config(name="yolov4_tiny", anchors=((1, 1),) * 5))
    tiny = factory.model_layers(
        _config(name="yolov4_tiny", anchors=((1, 1), (2, 2), (3, 3), (4, 4)))
    )
    assert [h.mask for h in tiny if isinstance(h, specs.Yolo)] == [(2, 3), (0, 1)]


def test_unknown_switch_values_are_rejected():
    for overrides in [{"neck": "bifpn"}, {"attention": "se"}, {"name": "yolov9"}]:
        with pytest.raises(ValueError, match=next(iter(overrides))):
            factory.model_layers(_config(**overrides))


@pytest.mark.slow
def test_dropblock_only_in_training_and_sam_runs():
    """Real forward passes: DropBlock changes outputs in training only; SAM and weighted
    fusion produce finite outputs; BN statistics update only in training."""
    model = factory.create_model(
        _config(attention="sam", fusion="weighted", dropblock=0.3, dropblock_size=3)
    )
    images = jax.random.uniform(jax.random.key(0), (2, SIZE, SIZE, 3))
    variables = jax.jit(model.init)({"params": jax.random.key(1)}, images)

    @functools.partial(jax.jit, static_argnums=2)
    def run(v, key, train):
        return model.apply(v, images, train=train, rngs={"dropblock": key}, mutable=["batch_stats"])

    eval_a, _ = run(variables, jax.random.key(2), False)
    eval_b, _ = run(variables, jax.random.key(3), False)
    train_a, stats = run(variables, jax.random.key(2), True)
    train_b, _ = run(variables, jax.random.key(3), True)
    for a, b, ta, tb in zip(eval_a, eval_b, train_a, train_b, strict=True):
        np.testing.assert_array_equal(a, b)
        assert np.isfinite(np.asarray(ta)).all()
        assert not np.allclose(ta, tb)
    before = jax.tree.leaves(variables["batch_stats"])
    after = jax.tree.leaves(stats["batch_stats"])
    assert any(not np.allclose(x, y) for x, y in zip(before, after, strict=True))


def test_cfg_export_round_trip_of_ablation(tmp_path):
    """Ablated layer lists (except CBAM) are darknet cfgs too."""
    layers = factory.model_layers(_config(attention="sam", neck="fpn", spp=False))
    path = tmp_path / "ablation.cfg"
    path.write_text(darknet.format_cfg({"width": 64, "height": 64, "channels": 3}, layers))
    assert darknet.parse_cfg(path)[1] == layers


def _dropped(probability, block_size, rate_scale, seed=0, shape=(4, 32, 32, 8)):
    from yolov4_jax.models import layers

    block = layers.DropBlock(probability, block_size)
    x = jnp.ones(shape)
    y = block.apply({}, x, True, rate_scale, rngs={"dropblock": jax.random.key(seed)})
    return np.asarray(y) == 0


@pytest.mark.parametrize(("rate_scale", "side"), [(1.0, 5), (0.6, 3), (0.05, 1)])
def test_dropblock_block_size_ramps_with_the_rate(rate_scale, side):
    dropped = _dropped(0.2, 5, rate_scale)
    frac = dropped.mean()
    # The expected dropped fraction is probability * rate_scale (blocks may overlap).
    assert 0.4 * 0.2 * rate_scale < frac < 1.3 * 0.2 * rate_scale
    # Every dropped pixel lies in a fully dropped side x side square inside the map.
    d = dropped.transpose(0, 3, 1, 2).reshape(-1, 32, 32)
    for m in d[:6]:
        covered = np.zeros_like(m)
        for i in range(32 - side + 1):
            for j in range(32 - side + 1):
                if m[i : i + side, j : j + side].all():
                    covered[i : i + side, j : j + side] = True
        assert (covered == m).all()
        if side > 1:  # and no smaller block exists on its own
            assert not (m & ~np.roll(m, 1, 0) & ~np.roll(m, -1, 0)).any()


def test_dropblock_ramp_does_not_recompile():
    from yolov4_jax.models import layers

    block = layers.DropBlock(0.2, 5)
    f = jax.jit(lambda x, r: block.apply({}, x, True, r, rngs={"dropblock": jax.random.key(0)}))
    for r in (0.1, 0.5, 1.0):
        f(jnp.ones((1, 16, 16, 2)), r)
    assert f._cache_size() == 1


@pytest.mark.parametrize(
    ("name", "switch"),
    [
        ("yolov4_tiny", {"spp": False}),
        ("yolov4_csp", {"attention": "sam"}),
        ("yolov4_tiny", {"depth": 0.5}),
    ],
)
def test_switches_a_variant_does_not_take_are_errors(name, switch):
    with pytest.raises(ValueError, match=f"config.model.{next(iter(switch))}"):
        factory.model_layers(_config(name=name, **switch))


@pytest.mark.parametrize(
    "switch",
    [
        {"activation": "leaky"},
        {"attention": "sam"},
        {"fusion": "weighted"},
        {"dropblock": 0.1},
        {"anchors": ((10, 10), (20, 20))},
        {"head_options": {"scale_x_y": 1.0}},
        {"width": 0.5},
    ],
)
def test_cfg_model_rejects_every_switch_it_would_ignore(tmp_path, switch):
    path = tmp_path / "net.cfg"
    layers = factory.model_layers(_config(name="yolov4_tiny", width=0.25), 3)
    path.write_text(darknet.format_cfg({"width": 64, "height": 64, "channels": 3}, layers))
    config = base.get_config().model
    config.name, config.cfg_path = "cfg", str(path)
    factory.create_model(config)  # the plain cfg builds
    for key, value in switch.items():
        config[key] = value
    with pytest.raises(ValueError, match=f"config.model.{next(iter(switch))}.*net.cfg"):
        factory.create_model(config)


@pytest.mark.parametrize("name", ["yolov4", "yolov4_tiny", "yolov4_csp"])
def test_head_options_override_scale_x_y_on_every_head(name):
    config = base.get_config()
    config.model.name = name
    config.model.head_options = {"scale_x_y": 1.0, "ignore_thresh": 0.5}
    heads = [s for s in factory.model_layers(config.model, 3) if isinstance(s, specs.Yolo)]
    assert heads and all(h.scale_x_y == 1.0 and h.ignore_thresh == 0.5 for h in heads)


def test_conv_gradients_setting_is_checked():
    from yolov4_jax.models import layers

    with pytest.raises(ValueError, match="conv gradients must be one of"):
        layers.conv2d(jnp.ones((1, 4, 4, 1)), jnp.ones((1, 1, 1, 1)), 1, 0, gradients="fast")
    with pytest.raises(ValueError, match="config.model.conv_gradients"):
        factory.create_model(_config(conv_gradients="fast"))


# darknet's csresnext50.cfg, read from its text: per stage, the filters of the blocks and of the
# grouped 3x3 (a stage outputs twice as many) and the number of residual blocks.
_CSRESNEXT50_STAGES = ((128, 3), (256, 3), (512, 5), (1024, 2))


def _csresnext50_cfg_parameters() -> int:
    """Trainable parameters of csresnext50.cfg (kernels, BN scale and offset, the logits' bias),
    counted from the cfg's layer sequence, independently of the builder."""

    def conv(c_in, filters, size, groups=1, bn=True):
        return size * size * (c_in // groups) * filters + (2 if bn else 1) * filters

    total = conv(3, 64, 7)  # stem, then a 2x2 max-pool: 64 channels
    total += conv(64, 128, 1) + conv(64, 64, 1)  # stage 1's two 1x1 paths
    c = 64  # the first block adds its 64-channel input into 128 channels (partial residual)
    for _ in range(3):
        total += conv(c, 128, 1) + conv(128, 128, 3, 32) + conv(128, 128, 1)
        c = 128
    total += conv(128, 128, 1) + conv(256, 256, 1)  # transition, concat of 128 + 128, 1x1
    for filters, blocks in _CSRESNEXT50_STAGES[1:]:
        total += conv(filters, filters, 3, 32)  # stride-2 grouped 3x3 on the last stage's output
        total += 2 * conv(filters, filters, 1)  # the two 1x1 paths
        total += blocks * (2 * conv(filters, filters, 1) + conv(filters, filters, 3, 32))
        total += conv(filters, filters, 1) + conv(2 * filters, 2 * filters, 1)
    return total + conv(2048, 1000, 1, bn=False)


def test_cspresnext50_is_csresnext50_cfg():
    """At width 1 and depth 1: darknet's csresnext50.cfg layer for layer (its [softmax] is the
    loss's), with the cfg's parameter count and stage strides."""
    layers = factory.model_layers(
        _config(name="cspresnext50", width=1.0, depth=1.0, activation="leaky"), 1000
    )
    assert layers == cspresnext.cspresnext50_classifier_layers()  # the builder's defaults
    assert len(layers) == 83  # the cfg's layers 0..82
    assert layers[:2] == (specs.Conv(64, 7, 2, 3, 1, True, "leaky"), specs.MaxPool(2, 2, 1))
    assert layers[-2:] == (specs.AvgPool(), specs.Conv(1000, 1, 1, 0, 1, False, "linear"))
    # Stage outputs where the cfg has them (csresnext50-panet-spp.cfg's "19:104x104 38:52x52
    # 65:26x26 80:13x13 for 416"), strides 4, 8, 16, 32.
    shapes = output_shapes(layers, 256, 256)
    assert [shapes[i] for i in (19, 38, 65, 80)] == [
        (64, 64, 256),
        (32, 32, 512),
        (16, 16, 1024),
        (8, 8, 2048),
    ]
    assert max(256 // h for h, _, _ in shapes[:81]) == 32  # output stride 32 before the pool
    convs = [s for s in layers if isinstance(s, specs.Conv)]
    grouped = [s for s in convs if s.groups != 1]
    assert len(grouped) == 16 and all(s.groups == 32 and s.size == 3 for s in grouped)
    assert [s.stride for s in grouped].count(2) == 3
    shortcuts = [s for s in layers if isinstance(s, specs.Shortcut)]
    assert len(shortcuts) == 13 and {s.activation for s in shortcuts} == {"leaky"}
    assert shapes[shortcuts[0].layers[0]][2] == 64 and shapes[8][2] == 128  # partial residual
    # Linear: each block's last 1x1, the split convs of stages 2 and 3, the logits.
    assert sum(s.activation == "linear" for s in convs) == 13 + 4 + 1
    assert {s.activation for s in convs} == {"leaky", "linear"}

    expected = _csresnext50_cfg_parameters()
    assert expected == 20_557_480  # also counted from the cfg's text when this was written
    model = factory.create_model(_config(name="cspresnext50", width=1.0, depth=1.0), 1000)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    assert sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables["params"])) == expected


@pytest.mark.parametrize("width", [0.0625, 0.125, 0.25, 0.5])
def test_cspresnext50_width_keeps_groups_valid(width):
    """Width scales every conv's filters as in CSPDarknet53; the grouped 3x3 keeps cardinality
    32 where the filters allow, else gcd(32, filters), which divides its input and output."""
    layers = factory.model_layers(_config(name="cspresnext50", width=width, depth=1.0), 10)
    full = cspresnext.cspresnext50_classifier_layers(10)
    shapes = output_shapes(layers, 64, 64)
    inputs = [3] + [c for _, _, c in shapes[:-1]]
    for i, (s, s_full) in enumerate(zip(layers, full, strict=True)):
        if not isinstance(s, specs.Conv) or i == len(layers) - 1:
            continue
        assert s.filters == builder.scale_width(s_full.filters, width)
        if s_full.groups != 1:
            assert s.groups == math.gcd(32, s.filters)
            assert inputs[i] % s.groups == 0 and s.filters % s.groups == 0
    # width 1/8: stage 1's 16 channels go depthwise; stage 2 on keeps 32 groups.
    if width == 0.125:
        grouped = [
            (s.filters, s.groups) for s in layers if isinstance(s, specs.Conv) and s.groups > 1
        ]
        assert grouped[0] == (16, 16) and grouped[-1] == (128, 32)


def test_cspresnext50_switches():
    def layers(**overrides):
        return factory.model_layers(_config(name="cspresnext50", **overrides), 10)

    leaky = layers(activation="leaky")
    mish = layers(activation="mish")
    # The activation switch replaces the cfg's leaky; the linear convs stay linear.
    for a, b in zip(leaky, mish, strict=True):
        if isinstance(a, specs.Conv | specs.Shortcut):
            assert b.activation == ("linear" if a.activation == "linear" else "mish")
    assert _count(leaky, specs.DropBlock) == 0
    assert _count(layers(dropblock=0.1, dropblock_size=3), specs.DropBlock, block_size=3) == 4
    # depth scales the blocks per stage (3, 3, 5, 2) as CSPDarknet53's: 0.34 -> (1, 1, 2, 1)
    assert _count(layers(depth=1.0), specs.Shortcut) == 13
    assert _count(leaky, specs.Shortcut) == 5
    for key, value in [("neck", "fpn"), ("spp", False), ("attention", "sam")]:
        with pytest.raises(ValueError, match=f"config.model.{key}.*cspresnext50 classifier"):
            layers(**{key: value})


def test_cspresnext50_forward_backward_tiny():
    model = factory.create_model(_config(name="cspresnext50", width=0.0625), num_classes=5)
    images = jax.random.uniform(jax.random.key(0), (2, SIZE, SIZE, 3))
    labels = jnp.asarray([1, 3])
    variables = jax.jit(model.init)(jax.random.key(1), images)

    @jax.jit
    def loss_and_grads(params):
        def loss(p):
            logits, _ = model.apply(
                {"params": p, "batch_stats": variables["batch_stats"]},
                images,
                train=True,
                mutable=["batch_stats"],
            )
            log_probs = jax.nn.log_softmax(logits.reshape(2, -1))
            return -jnp.take_along_axis(log_probs, labels[:, None], axis=1).mean(), logits

        return jax.value_and_grad(loss, has_aux=True)(params)

    (loss, logits), grads = loss_and_grads(variables["params"])
    assert logits.shape == (2, 1, 1, 5)
    assert np.isfinite(float(loss))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    kernels = [layer["kernel"] for layer in grads.values()]
    assert len(kernels) == _count(model.layers, specs.Conv)
    assert all(np.abs(np.asarray(k)).max() > 0 for k in kernels)  # every conv gets signal


def test_partial_residual_adds_into_the_leading_channels():
    """darknet's [shortcut] between layers of different depth (csresnext50.cfg's first block)."""
    from yolov4_jax.models import network

    x = jnp.arange(2 * 3 * 3 * 4, dtype=jnp.float32).reshape(2, 3, 3, 4)
    r = jnp.full((2, 3, 3, 2), 100.0)
    out = np.asarray(network.add_residual(x, r))
    np.testing.assert_array_equal(out[..., :2], np.asarray(x[..., :2]) + 100.0)
    np.testing.assert_array_equal(out[..., 2:], np.asarray(x[..., 2:]))
    # A deeper residual adds only its leading channels; the output keeps x's depth.
    out = np.asarray(network.add_residual(r, x))
    np.testing.assert_array_equal(out, 100.0 + np.asarray(x[..., :2]))
    # Spatial sizes must agree; weighted shortcuts still need equal depths.
    bad = [specs.Conv(4, 1), specs.Conv(2, 3, 2, 1), specs.Shortcut((0,))]
    with pytest.raises(ValueError, match="layer 2 \\[shortcut\\]"):
        output_shapes(bad, 8, 8)
    weighted = [
        specs.Conv(4, 1),
        specs.Conv(2, 1),
        specs.Shortcut((0,), weights_type="per_feature"),
    ]
    with pytest.raises(ValueError, match="layer 2 \\[shortcut\\]"):
        output_shapes(weighted, 8, 8)
    assert output_shapes([specs.Conv(4, 1), specs.Conv(2, 1), specs.Shortcut((0,))], 8, 8)[2] == (
        8,
        8,
        2,
    )


def test_input_size_check_names_the_misfit_and_the_channels():
    """detect and export share this check; each passes its own error class."""
    cfg = "[net]\nwidth=64\nheight=64\nchannels={c}\n"
    cfg += "[convolutional]\nfilters=3\nsize=1\nstride=1\n"
    cfg += "[convolutional]\nfilters=3\nsize=3\nstride=2\npad=1\n"
    cfg += "[upsample]\nstride=2\n[shortcut]\nfrom=0\n"  # 63 -> 32 -> 64: no longer 63

    def model(channels):
        net, layer_specs = darknet.parse_cfg(cfg.format(c=channels), is_text=True)
        return Network(layer_specs, net=tuple(net.items()))

    check_input_size(model(3), (64, 96))  # fits
    with pytest.raises(KeyError, match="1-channel input"):
        check_input_size(model(1), (64, 64), KeyError)
    with pytest.raises(ValueError, match="input size 64x63 does not fit the network"):
        check_input_size(model(3), (63, 64))
