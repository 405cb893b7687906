"""YOLOv4 on COCO 2017 with darknet's yolov4.cfg recipe (the released yolov4.weights).

608x608, batch 64 in 8 subdivisions, SGD lr .0013 with burn-in 1000 and steps at 400k/450k
of 500.5k, Mosaic, jitter .3, HSV, random shapes, CIoU, scale_x_y, iou_thresh .213: all
configs/base.py defaults. Needs COCO prepared as tfds `coco/2017` in array_record format:
    python -m yolov4_jax.main --config=configs/yolov4_coco.py --workdir=runs/yolov4 \
        --config.data.data_dir=/data/tfds
The paper's other detector BoF items are flags: --config.train.bn=cmbn, --config.train.sat=True,
--config.model.dropblock=0.1, --config.optim.schedule=cosine, --config.loss.label_smoothing=0.1.

Expected result: the paper's YOLOv4 at 608 reaches AP 43.5 / AP50 65.7 on COCO test-dev (Table
8); on val2017 this project's `evaluate` reports COCO's protocol (README, "Evaluate"). Expected
time: 500.5k updates of 64 images, 32 M images; divide by the training images/s that
`experiments/benchmark_train.py --size 608 --batch 64` prints for the device (not yet measured
here: no accelerator has been lent to this project's sessions). Not trained to completion here.
"""

from configs import base


def get_config():
    config = base.get_config()
    config.model.name = "yolov4"
    config.data.name = "coco/2017"
    config.data.workers = 8
    config.data.eval_batch_size = 32
    config.train.eval_every = 10000
    config.train.checkpoint_every = 1000
    config.train.log_every = 100
    return config
