"""Genetic search over the demo recipe's training hyperparameters (paper section 3.3, "GA").

    python -m experiments.evolve --search configs/evolve/demo.py --workdir runs/evolve_demo
    # quicker: each candidate trains 300 instead of 750 steps (about 2.5 h instead of 6 h)
    python -m experiments.evolve --search configs/evolve/demo.py --workdir runs/evolve_demo \
        --set optim.max_batches=300

6 candidates x 4 generations = 24 demo trainings, one after another (about 15 minutes each on
a 2-core CPU). Generation 0 starts from configs/demo.py's values; DIR/best_config.py is the
best candidate so far, DIR/evolve.md its table per generation.
"""

BASE = "configs/demo.py"
FITNESS = "AP50"
POPULATION = 6
GENERATIONS = 4
SEED = 0


def space():
    return {
        "optim.learning_rate": ("log", 1e-3, 3e-2),  # demo .01
        "optim.momentum": ("float", 0.8, 0.98),  # .949
        "optim.weight_decay": ("log", 1e-5, 5e-3),  # .0005
        "optim.burn_in": ("int", 20, 200),  # 100
        "loss.iou_normalizer": ("log", 0.02, 0.3),  # yolov4-tiny.cfg .07
        "loss.iou_thresh": ("float", 0.1, 1.0),  # yolov4-tiny.cfg: 1 (off); yolov4.cfg .213
        "loss.ignore_thresh": ("float", 0.5, 0.9),  # .7
        "data.jitter": ("float", 0.0, 0.5),  # .3
        "data.hue": ("float", 0.0, 0.2),  # .1
        "data.saturation": ("float", 1.0, 2.0),  # 1.5
        "data.exposure": ("float", 1.0, 2.0),  # 1.5
        "data.mosaic_prob": ("float", 0.0, 1.0),  # .5
    }
