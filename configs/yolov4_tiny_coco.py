"""YOLOv4-tiny on COCO 2017 with darknet's yolov4-tiny.cfg recipe.

416x416, batch 64 in 1 subdivision, lr .00261 with burn-in 1000 and steps at 1.6M/1.8M of
2000.2k, Mosaic off, jitter .3, HSV, random shapes, CIoU, scale_x_y 1.05, iou_thresh .213
(the cfg's [yolo] options come with the model).
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
    config.optim.subdivisions = 1
    config.optim.learning_rate = 0.00261
    config.optim.max_batches = 2000200
    config.optim.steps = (1600000, 1800000)
    config.train.eval_every = 10000
    config.train.log_every = 100
    return config
