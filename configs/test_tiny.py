"""A seconds-long run for tests: YOLOv4-tiny at width 1/8 on the tiny embedded dataset."""

from configs import base


def get_config():
    config = base.get_config()
    config.model.name = "yolov4_tiny"
    config.model.width = 0.125
    config.data.name = "yolov4_synthetic/tiny"
    config.data.image_size = 64
    config.data.batch_size = 8
    config.data.max_boxes = 8
    config.data.random_shapes = False
    config.optim.subdivisions = 2
    config.optim.max_batches = 4
    config.optim.burn_in = 2
    config.optim.learning_rate = 0.001
    config.optim.reference_batch_size = 8
    config.train.log_every = 2
    config.train.eval_every = 0
    config.train.checkpoint_every = 2
    config.train.eval_score_threshold = 0.001
    return config
