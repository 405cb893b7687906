"""A seconds-long classifier run for tests: CSPDarknet53 at width 1/8 on the tiny embedded
classification dataset. Its backbone is that of a yolov4 detector at the same width and depth."""

from configs import base


def get_config():
    config = base.get_config()
    config.task = "classification"
    config.model.name = "cspdarknet53"
    config.model.width = 0.125
    config.model.depth = 0.33
    config.data.name = "yolov4_synthetic_cls/tiny"
    config.data.image_size = 32
    config.data.batch_size = 8
    config.data.eval_batch_size = 8
    config.data.random_shapes = False
    config.data.mosaic = True
    config.data.cutmix = True
    config.loss.label_smoothing = 0.1
    config.optim.subdivisions = 2
    config.optim.max_batches = 4
    config.optim.burn_in = 2
    config.optim.learning_rate = 0.001
    config.optim.reference_batch_size = 8
    config.train.log_every = 2
    config.train.eval_every = 0
    config.train.checkpoint_every = 2
    config.train.best_metric = "top1"
    config.train.detections_image = False
    return config
