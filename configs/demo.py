"""The README's main command: YOLOv4-tiny at half width on the embedded dataset, CPU-sized.

`make demo` trains this on a 2-core CPU in about 10 minutes (about 1 min of dataset generation
on first use, compile, 1500 updates, evaluation on the 500 validation images and the detection
picture; 9 min 35 s without the generation on the AMD EPYC machine of 2026-12-07) on
`yolov4_synthetic` 2.0.0, where only the shape names the class (README, "The demo", gives AP
over three seeds). The recipe is yolov4-tiny.cfg's with smaller numbers: Mosaic, jitter .3
and resize 1.5 (from the cfg's last [yolo]), HSV, flips, CIoU with darknet's deltas, burn-in
then cosine annealing; random shapes are off so the step compiles once.
"""

from configs import base


def get_config():
    config = base.get_config()
    config.model.name = "yolov4_tiny"
    config.model.width = 0.5
    config.data.name = "yolov4_synthetic"
    config.data.data_dir = "~/tensorflow_datasets"
    config.data.image_size = 256
    config.data.batch_size = 16
    config.data.eval_batch_size = 20
    config.data.max_boxes = 16
    config.data.random_shapes = False
    config.data.jitter = 0.3  # yolov4-tiny.cfg's last [yolo] (None would read the same)
    config.data.resize = 1.5  # likewise; named here so that searches start from them
    config.data.workers = 1
    config.optim.subdivisions = 1
    config.optim.learning_rate = 0.01
    config.optim.grad_clip_norm = 10.0  # lr .01 diverges at the end of burn-in without it
    config.optim.reference_batch_size = 16
    config.optim.burn_in = 100
    config.optim.schedule = "cosine"
    config.optim.max_batches = 1500
    config.optim.learning_rate_min = 0.0001
    config.train.log_every = 20
    config.train.eval_every = 0
    config.train.checkpoint_every = 500
    return config
