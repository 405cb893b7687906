"""CSPResNeXt-50 (Wang et al. 2020, CSPNet), the other backbone of the YOLOv4 paper.

The paper compares it with CSPDarknet53 as a classifier (Table 2: the backbone's bag of
freebies and Mish) and as a detector backbone (Table 6). `cspresnext50_classifier_layers()`
with its defaults is layer-for-layer darknet's csresnext50.cfg (83 layers; darknet's final
[softmax] is the loss's, as for cspdarknet53): a 7x7 stem and a max-pool, four CSP stages of
ResNeXt bottlenecks (1x1, grouped 3x3 of cardinality 32, linear 1x1, residual), global
average pooling and a 1x1 conv to the logits. Leaky everywhere but the residual branches'
last 1x1 and the split convs of stages 2 and 3, which are linear.

Width and depth scale as in CSPDarknet53 (`Builder`: filters times `width` rounded to a
multiple of 8; blocks times `depth`, at least one). The grouped 3x3 convs keep cardinality 32
wherever the scaled filters allow and otherwise take gcd(32, filters) groups (`Builder.conv`):
the channels per group shrink with the width, as every 1x1 conv's do, so the network keeps its
proportions; at width 1/8 stage 1's 16 channels make its 3x3 depthwise (16 groups).
"""

from __future__ import annotations

from yolov4_jax.models import specs
from yolov4_jax.models.builder import Builder, classifier_layers, scale_depth

CARDINALITY = 32
# Filters inside each stage's blocks (and of its grouped 3x3); a stage outputs twice as many.
STAGE_FILTERS = (128, 256, 512, 1024)
STAGE_BLOCKS = (3, 3, 5, 2)  # stages 2-4: one block fewer than ResNeXt-50's (3, 4, 6, 3)
# The two 1x1 convs that split stages 2 and 3 are linear in csresnext50.cfg; those of stages 1
# and 4 take the activation.
LINEAR_SPLIT = (False, True, True, False)


def resnext_block(b: Builder, filters: int, activation: str) -> int:
    """ResNeXt bottleneck: 1x1, grouped 3x3, linear 1x1, then the residual and activation.

    Where the block's input has fewer channels (stage 1's first block: 64 into 128) the
    residual is darknet's partial one: it adds into the first channels only (see
    `network.add_residual`).
    """
    block_in = b.last
    b.conv(filters, 1, activation)
    b.conv(filters, 3, activation, groups=CARDINALITY)
    b.conv(filters, 1, "linear")
    return b.add(specs.Shortcut((block_in,), activation))


def csp_resnext_stage(
    b: Builder,
    stage: int,
    blocks: int,
    activation: str,
    dropblock: specs.DropBlock | None = None,
) -> int:
    """One CSP stage: downsample, split into two 1x1 paths, blocks on one, merge, 1x1."""
    filters = STAGE_FILTERS[stage]
    split_activation = "linear" if LINEAR_SPLIT[stage] else activation
    if stage == 0:
        # Stage 1 takes the stem's max-pool as it is, and its block path starts half wide.
        source = b.last
        part_a = b.conv(filters, 1, split_activation)
        b.route(source)
        b.conv(filters // 2, 1, split_activation)
    else:
        source = b.conv(filters, 3, activation, stride=2, groups=CARDINALITY)
        part_a = b.conv(filters, 1, split_activation)
        b.route(source)
        b.conv(filters, 1, split_activation)
    for _ in range(blocks):
        resnext_block(b, filters, activation)
    b.conv(filters, 1, activation)
    b.route(b.last, part_a)
    out = b.conv(2 * filters, 1, activation)
    return b.add(dropblock) if dropblock is not None else out


def cspresnext50(
    b: Builder,
    activation: str = "leaky",
    depth: float = 1.0,
    dropblock: specs.DropBlock | None = None,
) -> list[int]:
    """The CSPResNeXt-50 backbone; returns the four stage outputs (strides 4, 8, 16, 32)."""
    b.conv(64, 7, activation, stride=2)
    b.add(specs.MaxPool(2, 2, 1))  # darknet's default padding, size - 1
    return [
        csp_resnext_stage(b, stage, scale_depth(blocks, depth), activation, dropblock)
        for stage, blocks in enumerate(STAGE_BLOCKS)
    ]


def cspresnext50_classifier_layers(
    num_classes: int = 1000,
    activation: str = "leaky",
    dropblock_probability: float = 0.0,
    dropblock_size: int = 7,
    width: float = 1.0,
    depth: float = 1.0,
) -> tuple[specs.Spec, ...]:
    """CSPResNeXt-50 as an image classifier; the defaults are darknet's csresnext50.cfg."""
    return classifier_layers(
        cspresnext50, num_classes, activation, dropblock_probability, dropblock_size, width, depth
    )
