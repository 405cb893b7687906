"""Every field of a yolov4_jax run, with the paper's and darknet's yolov4.cfg defaults.

Experiment configs call `get_config()` and override a few fields. Any field can be set from the
command line: `python -m yolov4_jax.main --config=configs/base.py --config.loss.box_loss=giou`.
"""

from __future__ import annotations

import ml_collections


def _model() -> ml_collections.ConfigDict:
    m = ml_collections.ConfigDict()
    # yolov4 | yolov4_tiny | yolov4_csp | cfg (a darknet cfg file, `cfg_path`) | cspdarknet53
    # (the backbone as a classifier, for config.task=classification) | cspresnext50 (the
    # paper's other classifier backbone, csresnext50.cfg; that cfg is activation=leaky)
    m.name = "yolov4"
    m.cfg_path = ""  # darknet .cfg used when name == "cfg"
    m.weights = ""  # darknet .weights (or yolov4.conv.137-style partial file) to start from
    m.weights_num_layers = -1  # read only this many layers of `weights` (-1: all)
    # A classifier run's workdir (config.task=classification) whose backbone starts the detector.
    m.backbone_checkpoint = ""
    m.backbone_checkpoint_which = "best"  # best | latest checkpoint of that run
    m.num_classes = 80
    m.anchors = ()  # (w, h) pairs in pixels of the training size; () keeps the variant's own
    m.width = 1.0  # channel multiplier (scaled-YOLOv4 style); tests use tiny widths
    m.depth = 1.0  # residual-block multiplier
    m.activation = "mish"  # backbone activation: mish (paper section 3.4) | leaky | swish | relu
    m.neck_activation = "leaky"  # neck and heads: leaky (yolov4.cfg) | mish | swish | relu
    m.residual_fusion = "add"  # backbone residuals: add ([shortcut]) | weighted (MiWRC, 3.4)
    m.neck = "pan"  # pan (paper section 3.4) | fpn
    m.spp = True  # modified SPP block, max-pools 5/9/13 at stride 1 (paper section 3.4)
    # none | sam (point-wise SAM, paper Fig. 5, placed as yolov4-sam-mish-csp-reorg-bfm.cfg) |
    # cbam (CBAM: channel then spatial attention)
    m.attention = "none"
    m.fusion = (
        "concat"  # neck: concat | add | weighted (MiWRC / BiFPN-style fast normalised fusion)
    )
    m.dropblock = 0.0  # DropBlock drop probability (paper: BoF for the backbone; 0 = off)
    m.dropblock_size = 7  # DropBlock block size (darknet ramps both up over training)
    m.head_options = {}  # overrides of the [yolo] options (ignore_thresh, scale_x_y...)
    m.bn_momentum = 0.99  # Flax convention (weight of old stats); darknet's update rate .01
    m.dtype = "float32"  # compute dtype: float32 | bfloat16
    # auto | xla | canonical: how conv gradients are written (same values); auto = canonical on
    # CPU, where XLA runs autodiff's gradient convs inside scan/cond as naive loops (ops/conv.py)
    m.conv_gradients = "auto"
    # auto | auto_f4 | direct | winograd: how 3x3 stride-1 convs are computed; auto = Winograd
    # F(2x2,3x3) on CPU in float32 for layers where it is faster (ops/winograd.py), direct
    # elsewhere; auto_f4 = auto with F(4x4,3x3) on maps of 48x48 and up (a CPU training step
    # 0-6% faster, a 7 s longer compile, a 0.1 GB higher peak); mkl = every conv through Intel
    # oneMKL on the CPU (pip install mkl): with dtype bfloat16 it uses the CPU's bf16 units,
    # which XLA:CPU does not (yolov4_jax/ops/cpu_gemm.py)
    m.conv_algorithm = "auto"
    return m


def _loss() -> ml_collections.ConfigDict:
    """yolov4_jax.detection.losses.LossOptions; None keeps each [yolo] head's own cfg value."""
    placeholder = ml_collections.config_dict.placeholder
    loss = ml_collections.ConfigDict()
    loss.box_loss = placeholder(str)  # mse | iou | giou | diou | ciou (yolov4.cfg: ciou, sec 3.4)
    loss.iou_normalizer = placeholder(float)  # box-loss weight (yolov4.cfg: .07)
    loss.obj_normalizer = placeholder(float)  # objectness weight (yolov4.cfg: 1)
    loss.cls_normalizer = placeholder(float)  # class weight (yolov4.cfg: 1)
    loss.ignore_thresh = placeholder(float)  # no-object loss dropped above this IoU (.7)
    loss.iou_thresh = placeholder(float)  # extra positive anchors above this shape IoU (.213)
    loss.label_smoothing = placeholder(float)  # class label smoothing eps (paper BoF; cfg: 0)
    loss.objectness_smooth = placeholder(bool)  # IoU as objectness target (yolov4.cfg: off)
    loss.max_delta = placeholder(float)  # per-image box-gradient clip (yolov4.cfg: 5)
    # darknet (delta_yolo_box's deltas: dx_box_iou, collisions summed then averaged, max_delta
    # per truth) | autodiff (the exact gradient of the written box loss; docs/recipe/loss.md)
    loss.box_gradient = "darknet"
    # darknet (new_coords heads: delta y - p on the probabilities; objectness_smooth keeps a
    # positive's earlier delta; cls_normalizer unused, as without counters_per_class) | bce
    loss.obj_cls_gradient = "darknet"
    # SAT's first stage (train.sat): darknet (yolo_layer.c's adversarial deltas: objectness
    # down by sqrt(box area), confident classes and their boxes pushed away) | loss (the
    # gradient of this loss with no ground truth: objectness alone)
    loss.sat_gradient = "darknet"
    loss.ignore_class_thresh = 0.25  # ignore rule needs a class prob above this (darknet)
    return loss


def _optim() -> ml_collections.ConfigDict:
    """yolov4_jax.training.optim.make_optimizer: darknet's SGD, burn-in and schedule."""
    o = ml_collections.ConfigDict()
    o.optimizer = "sgd"  # sgd (darknet) | adam (beta1 = momentum; for short runs such as the demo)
    o.learning_rate = 0.0013  # at reference_batch_size images per update (yolov4.cfg)
    o.reference_batch_size = 64  # lr scales linearly with the global batch (darknet: x #GPUs)
    o.momentum = 0.949  # SGD momentum (yolov4.cfg)
    o.nesterov = False  # darknet uses heavy-ball momentum
    o.weight_decay = 0.0005  # L2 on conv kernels only (darknet's `decay`)
    o.burn_in = 1000  # updates of lr * (step / burn_in) ** burn_in_power (darknet burn_in)
    o.burn_in_power = 4.0  # darknet's `power`
    o.schedule = "steps"  # steps | cosine | sgdr | poly | constant (paper BoF: cosine annealing)
    o.steps = (400000, 450000)  # `steps`: lr *= scales[i] from update steps[i] on
    o.scales = (0.1, 0.1)  # multipliers for `steps`
    o.max_batches = 500500  # total updates (~270 COCO epochs at batch 64)
    o.learning_rate_min = 1e-5  # cosine / sgdr floor (darknet learning_rate_min)
    o.sgdr_cycle = 0  # sgdr: first cycle length in updates; 0: the whole run
    o.sgdr_mult = 2.0  # sgdr: each cycle this many times longer than the last
    o.grad_clip_norm = 0.0  # global-norm gradient clipping; 0 disables (darknet has none)
    o.subdivisions = 8  # micro-batches per update at batch 64 (CmBN; accumulated in train step)
    o.ema = False  # EMA of weights (yolov4.cfg: none; yolov4-csp.cfg: ema_alpha .9998)
    o.ema_decay = 0.9998  # EMA decay (darknet ema_alpha)
    o.ema_warmup_steps = 2000.0  # yolov5 warm decay decay*(1-exp(-t/2000)); 0: constant decay
    o.ema_start_step = 0  # EMA follows the weights before this (darknet: max_batches // 2)
    return o


def _data() -> ml_collections.ConfigDict:
    """Dataset, host pipeline and augmentations (yolov4_jax/data; docs/data.md)."""
    d = ml_collections.ConfigDict()
    d.name = "yolov4_synthetic"  # tfds name: yolov4_synthetic (embedded), coco/2017, prepared
    d.data_dir = "~/tensorflow_datasets"  # tfds data directory (embedded dataset is built here)
    d.image_size = 608  # network input side (yolov4.cfg width=height=608)
    d.batch_size = 64  # global batch per optimizer step (yolov4.cfg batch=64)
    d.eval_image_size = 0  # evaluation input side; 0: image_size
    d.eval_batch_size = 0  # global evaluation batch; 0: batch_size
    d.max_boxes = 90  # boxes per image after padding (darknet [yolo] max=90)
    d.workers = 0  # grain worker processes (0: in the main process)
    d.fast_decode = True  # decode JPEGs at 1/2-1/8 size when the canvas needs no more (ours)
    d.letterbox = False  # aspect-preserving resize; darknet letter_box=0 (stretch)
    # None: the model's last [yolo] head's value, as darknet reads them (detector.c); without
    # heads (classifier, data tools) .3 and 1.
    d.jitter = ml_collections.config_dict.placeholder(float)  # crop offsets per side up to
    # jitter * size (yolov4.cfg and yolov4-tiny.cfg .3, yolov4-csp.cfg .1)
    d.resize = ml_collections.config_dict.placeholder(float)  # crop scale offsets, data.c
    # (yolov4.cfg none: 1, yolov4-tiny.cfg and yolov4-csp.cfg 1.5)
    d.flip = True  # horizontal flip with p=.5 (darknet flip=1)
    d.hue = 0.1  # hue shift uniform in +-hue of the colour circle (yolov4.cfg hue=.1)
    d.saturation = 1.5  # scale in [1, s], inverted with p=.5 (s < 1 as 1/s, darknet); 1: off
    d.exposure = 1.5  # value scale in [1, e], inverted with p=.5 (as saturation); 1: off
    # Classifier training only: darknet's crop (image.c::random_augment_image) replaces jitter.
    d.min_crop = 0  # shorter side resized to r px, an int in [min_crop, max_crop]; 0: off
    d.max_crop = 0  # largest r, pixels at image_size (csdarknet53-omega.cfg: 128..448 at 256)
    d.aspect = 1.0  # width squeezed by darknet's rand_scale(aspect): .75 and 1/.75 alike; 1: off
    d.angle = 0.0  # rotation uniform in +-angle degrees about the image centre; 0: off
    d.mosaic = True  # Mosaic, paper section 3.3 (yolov4.cfg mosaic=1)
    d.mosaic_prob = 0.5  # fraction of samples that are mosaics (darknet: p=.5 per batch)
    d.mosaic_min_cut = 0.2  # cut point uniform in [min_cut, max_cut] of each side (darknet .2)
    d.mosaic_max_cut = 0.8  # (darknet .8)
    d.cutmix = False  # CutMix adapted to detection (darknet: classifier only); docs/data.md
    d.cutmix_prob = 0.5  # fraction of non-mosaic samples that get CutMix (darknet p=.5)
    d.cutmix_min_size = 0.3  # patch side uniform in [min, max] of the image (darknet 30-80%)
    d.cutmix_max_size = 0.8
    d.cutmix_min_visible = 0.3  # keep a covered box if this fraction stays visible (ours)
    d.mixup = False  # MixUp 0.5/0.5 with the union of boxes (darknet mixup=0)
    d.mixup_prob = 0.5  # fraction of remaining samples blended (darknet: 50% of batches)
    d.random_shapes = True  # random training shapes (yolov4.cfg random=1, last [yolo])
    d.random_shapes_every = 10  # steps between shape changes (detector.c: every 10 iterations)
    d.random_shapes_scale = 1.4  # darknet random=1: side scaled by r in [1/1.4, 1.4]
    d.random_shapes_range = ()  # (min, max) sides, multiples of 32, instead of the scale rule
    d.random_shapes_step = 32  # sides are multiples of this (darknet resize_step=32)
    d.dynamic_minibatch = False  # batch scaled inversely with area, then x.8 (darknet's
    # dynamic_minibatch=0; detector.c)
    d.min_box_size = 1.0  # drop boxes thinner than this many pixels (darknet: 1 px)
    d.min_visible = 0.0  # drop boxes with less of their area left after cropping (darknet: 0)
    return d


def _train() -> ml_collections.ConfigDict:
    """The train loop and step (yolov4_jax/training/): BN mode, SAT, DropBlock, logging, saving."""
    t = ml_collections.ConfigDict()
    t.bn = "bn"  # bn (yolov4.cfg batch_normalize=1, synced over devices) | cmbn (paper 3.3) | cbn
    t.cbn_window = 4  # cbn: statistics of this many iterations (the current one included)
    t.cbn_compensate = True  # cbn: first-order compensation of the weight change (CBN paper)
    t.sat = False  # Self-Adversarial Training, paper section 3.3 (yolov4.cfg: off)
    t.sat_prob = 0.5  # fraction of micro-batches after burn-in that get SAT (darknet .5)
    t.sat_lr = 0.05  # darknet adversarial_lr; the step is sat_lr * step / max_batches
    t.unroll_subdivisions = False  # unroll micro-batches instead of lax.scan (longer compile)
    t.dropblock_ramp = 0.85  # DropBlock probability and block size ramp up over this fraction
    t.log_every = 50  # steps between metric writes (metrics.jsonl, TensorBoard, progress)
    t.eval_every = 5000  # steps between evaluations on the validation split (0: end only)
    t.checkpoint_every = 1000  # steps between checkpoints (also at eval, SIGTERM and the end)
    t.keep_checkpoints = 2  # latest checkpoints kept in WORKDIR/checkpoints (best/ keeps one)
    t.restore_fallback = False  # resume from an older checkpoint (or best/) if the latest is bad
    t.best_metric = "AP"  # eval metric that picks the kept best checkpoint (classifier: top1)
    t.eval_split = "validation"  # split evaluated during and after training; "": no evaluation
    t.eval_max_batches = 0  # evaluate on at most this many batches (0: the whole split)
    t.eval_score_threshold = 0.005  # darknet `detector map` confidence threshold
    t.eval_iou_threshold = 0.45  # darknet `detector map` NMS threshold
    t.eval_max_detections = 100  # per image, COCO's maxDets
    t.detections_image = True  # write WORKDIR/detections.png (validation images) at the end
    t.distributed = False  # call jax.distributed.initialize() (multi-host GPU/TPU)
    return t


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.task = "detection"  # detection | classification (backbone pretraining)
    config.model = _model()
    config.data = _data()
    config.loss = _loss()
    config.optim = _optim()
    config.train = _train()
    config.seed = 0
    return config
