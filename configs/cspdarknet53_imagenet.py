"""CSPDarknet53 pretrained on ImageNet with the paper's classifier recipe (section 4.1).

    python -m yolov4_jax.main --config=configs/cspdarknet53_imagenet.py --workdir=runs/cls

Needs tfds ``imagenet2012`` prepared in array_record format in ``config.data.data_dir``
(`tfds build imagenet2012 --file_format=array_record` with the manually downloaded files).
The paper's defaults: 8,000,000 training steps, batch 128 in mini-batches of 32, polynomial
decay from lr .1 with 1000 warm-up steps, momentum .9, weight decay .005; the BoF runs add 50%
more steps. Its best backbone BoF (Table 2) is CutMix + Mosaic + label smoothing + Mish, which
this config turns on (DropBlock did not help the classifier there and is off). The detector
then starts from the result: ``config.model.backbone_checkpoint=runs/cls``.
"""

from configs import base


def get_config():
    config = base.get_config()
    config.task = "classification"
    config.model.name = "cspdarknet53"
    config.model.num_classes = 1000
    config.model.activation = "mish"
    config.data.name = "imagenet2012"
    config.data.image_size = 256  # csdarknet53-omega.cfg width=height=256
    config.data.eval_image_size = 256
    config.data.batch_size = 128
    config.data.eval_batch_size = 128
    config.data.workers = 8
    config.data.random_shapes = False
    config.data.mosaic = True  # mixed labels by quadrant area
    config.data.cutmix = True  # mixed labels by patch area; alternates with mosaic per sample
    config.data.mosaic_prob = 0.5
    config.data.cutmix_prob = 0.5
    config.loss.label_smoothing = 0.1  # 0.9 for the true class, 0.1 / 999 for the others
    config.optim.subdivisions = 4  # mini-batch 32
    config.optim.learning_rate = 0.1
    config.optim.reference_batch_size = 128
    config.optim.momentum = 0.9
    config.optim.weight_decay = 0.005
    config.optim.burn_in = 1000
    config.optim.burn_in_power = 4.0  # darknet's `power`, shared by burn-in and poly
    config.optim.schedule = "poly"
    config.optim.max_batches = 8_000_000
    config.train.eval_every = 50_000
    config.train.checkpoint_every = 5_000
    config.train.log_every = 100
    config.train.best_metric = "top1"
    config.train.detections_image = False
    return config
