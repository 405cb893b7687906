"""The YOLOv4 model family as layer lists run by one Flax module."""

from yolov4_jax.models.csp import yolov4_csp_layers
from yolov4_jax.models.cspresnext import cspresnext50_classifier_layers
from yolov4_jax.models.network import Network, check_input_size, layer_name, output_shapes
from yolov4_jax.models.tiny import yolov4_tiny_layers
from yolov4_jax.models.transfer import transfer_backbone
from yolov4_jax.models.yolov4 import cspdarknet53_classifier_layers, yolov4_layers

__all__ = [
    "check_input_size",
    "cspdarknet53_classifier_layers",
    "cspresnext50_classifier_layers",
    "transfer_backbone",
    "Network",
    "layer_name",
    "output_shapes",
    "yolov4_layers",
    "yolov4_tiny_layers",
    "yolov4_csp_layers",
]
