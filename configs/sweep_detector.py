"""The detector sweeps' scale: configs/demo.py at 192 px for 2400 updates, AP50 every 400.

Measured on the 2-core AMD EPYC machine (2026-12-07, seed 0, baseline recipe; AP50 on the 500
validation images of yolov4_synthetic 2.0.0 at updates 400/800/.../end):

    1200 updates (cosine over 1200):  .055 .179 .233              5.2 min a run
    2400 updates (cosine over 2400):  .059 .169 .282 .320 .393 .421   about 9.5 min
    1200 updates at lr .02:           .023 .079 .132              (lr .01 kept)

Even 2400 updates leave the curve rising (+.03 AP50 over its last 400): the shape-only data
asks more of YOLOv4-tiny than a CPU budget gives, so the sweeps measure the recipe early in
training, and their READMEs say so. At 2400 updates a YOLOv4-tiny run takes 10 to 11 minutes
with its evaluations; the small YOLOv4 of bos_detector trains at 1.96 updates/s against
YOLOv4-tiny's 4.62 (200 updates each, same machine, 2026-12-07), so about 23 minutes a run:
experiments/run_sweeps.sh's variants x 3 seeds are about 18 hours, run across sessions (it
resumes). The recipe is the
demo's (Mosaic, jitter .3, resize 1.5, HSV, flips, CIoU with darknet's deltas, burn-in then
cosine annealing); only the canvas, the number of updates and the evaluations along the way
(for the learning curves, curves.png) differ.
"""

from configs import demo


def get_config():
    config = demo.get_config()
    config.data.image_size = 192
    config.optim.max_batches = 2400
    config.optim.burn_in = 100
    config.train.eval_every = 400
    config.train.checkpoint_every = 400
    return config
