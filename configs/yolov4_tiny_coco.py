"""YOLOv4-tiny on COCO 2017 with darknet's yolov4-tiny.cfg recipe.

416x416, batch 64 in 1 subdivision, SGD momentum .9 and decay .0005, lr .00261 with burn-in
1000 and steps at 1.6M/1.8M of 2000.2k, Mosaic off, jitter .3, HSV, no random shapes (the cfg's
heads say random=0), CIoU, scale_x_y 1.05, one anchor per ground truth (the cfg sets no
iou_thresh). The cfg's [yolo] options come with the model. Darknet's published model reaches
AP50 40.2 on COCO test-dev at 416; this config has not been trained to completion here.
"""

from configs import base


def get_config():
    config = base.get_config()
    config.model.name = "yolov4_tiny"
    config.data.name = "coco/2017"
    config.data.image_size = 416
    config.data.mosaic = False  # yolov4-tiny.cfg has no mosaic=1
    config.data.workers = 8
    config.data.eval_batch_size = 32
    config.data.random_shapes = False  # random=0 on both [yolo] layers
    config.optim.subdivisions = 1
    config.optim.momentum = 0.9
    config.optim.learning_rate = 0.00261
    config.optim.max_batches = 2000200
    config.optim.steps = (1600000, 1800000)
    config.train.eval_every = 10000
    config.train.log_every = 100
    return config
