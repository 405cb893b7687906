"""A seconds-long search for tests: configs/test_tiny.py, 2 candidates x 2 generations.

    python -m experiments.evolve --search configs/evolve/test_tiny.py --workdir /tmp/evolve \
        --set train.eval_max_batches=1
"""

BASE = "configs/test_tiny.py"
FITNESS = "AP50"
POPULATION = 2
GENERATIONS = 2
SEED = 0


def space():
    return {
        "optim.learning_rate": ("log", 1e-4, 1e-2),
        "optim.momentum": ("float", 0.8, 0.98),
        "optim.burn_in": ("int", 1, 3),
        "loss.box_loss": ("choice", ("ciou", "giou", "diou")),  # None in the base: the cfg's ciou
        "data.mosaic_prob": ("float", 0.0, 1.0),
    }
