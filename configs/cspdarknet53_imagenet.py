"""CSPDarknet53 pretrained on ImageNet with darknet's csdarknet53-omega.cfg (paper section 4.1).

    python -m yolov4_jax.main --config=configs/cspdarknet53_imagenet.py --workdir=runs/cls

Needs tfds ``imagenet2012`` prepared in array_record format in ``config.data.data_dir``
(`tfds build imagenet2012 --file_format=array_record` with the manually downloaded files).
The settings follow csdarknet53-omega.cfg, the released recipe of the paper's backbone: batch
128 in mini-batches of 32, polynomial decay (power 4) from lr .1 with 1000 warm-up steps,
momentum .9, weight decay .0005, 1,200,000 steps; darknet's classifier crop (shorter side to
128-448 px, aspect .75, rotation up to 7 degrees), flip and HSV; CutMix + Mosaic + label
smoothing + Mish, the paper's best backbone BoF (Table 2; DropBlock did not help the
classifier there and is off). The paper's text differs: 8,000,000 steps and weight decay .005
(with 50% more steps for the BoF runs); the cfg, the released configuration of the backbone,
was chosen. The detector then starts from the result: ``config.model.backbone_checkpoint=runs/cls``.
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
    # Darknet's classifier crop (image.c::random_augment_image) instead of the jitter crop.
    config.data.min_crop = 128  # min_crop=128: the shorter side goes to r in [128, 448] px
    config.data.max_crop = 448  # max_crop=448
    config.data.aspect = 0.75  # aspect=.75, darknet's value: width squeezed by .75 to 1/.75
    config.data.angle = 7.0  # angle=7: rotation uniform in +-7 degrees
    config.data.hue = 0.1  # hue=.1: shift uniform in +-.1 of the colour circle
    config.data.saturation = 0.75  # saturation=.75: rand_scale, factors in [.75, 1/.75]
    config.data.exposure = 0.75  # exposure=.75
    config.data.mosaic = True  # mixed labels by quadrant area
    config.data.cutmix = True  # mixed labels by patch area; alternates with mosaic per sample
    config.data.mosaic_prob = 0.5
    config.data.cutmix_prob = 0.5
    config.loss.label_smoothing = 0.1  # 0.9 for the true class, 0.1 / 999 for the others
    config.optim.subdivisions = 4  # mini-batch 32
    config.optim.learning_rate = 0.1
    config.optim.reference_batch_size = 128
    config.optim.momentum = 0.9
    config.optim.weight_decay = 0.0005  # decay=0.0005 (the paper's text: .005)
    config.optim.burn_in = 1000
    config.optim.burn_in_power = 4.0  # darknet's `power`, shared by burn-in and poly
    config.optim.schedule = "poly"
    config.optim.max_batches = 1_200_000  # max_batches=1200000 (the paper's text: 8,000,000)
    config.train.eval_every = 50_000
    config.train.checkpoint_every = 5_000
    config.train.log_every = 100
    config.train.best_metric = "top1"
    config.train.detections_image = False
    return config
