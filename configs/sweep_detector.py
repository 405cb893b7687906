"""The detector sweeps' scale: configs/demo.py at 192 px for 1200 updates, AP50 every 400.

Sized so that the three detector sweeps (bof_detector, augmentation, bos_detector; 3 seeds each)
fit in about 10 hours on the project's 2-core CPU (experiments/run_sweeps.sh): a run of
YOLOv4-tiny at half width takes about 5 minutes, one of the small YOLOv4 of bos_detector about
three times that. The recipe is the demo's (Mosaic, jitter .3, resize 1.5, HSV, flips, CIoU with
darknet's deltas, burn-in then cosine annealing); only the canvas, the number of updates and the
evaluations along the way (for the learning curves, curves.png) differ.
"""

from configs import demo


def get_config():
    config = demo.get_config()
    config.data.image_size = 192
    config.optim.max_batches = 1200
    config.optim.burn_in = 100
    config.train.eval_every = 400
    config.train.checkpoint_every = 400
    return config
