"""Test helper: a tiny trained run directory with the layout of the real trainer.

``make_tiny_run`` writes ``config.json``, ``checkpoints/`` (a training checkpoint with the
three networks, three optimizers and the counters) and ``calibration.json``, i.e. what
``grdnet_tf.run_dir.load_for_inference`` and the exporter read. Later tests
may replace it with a real tiny training run.
"""
import os

import numpy as np
import tensorflow as tf

from grdnet_tf import config as config_lib
from grdnet_tf import keys
from grdnet_tf.models import build_grdnet
from grdnet_tf.run_dir import (CALIBRATION_JSON, CHECKPOINT_DIR, write_json,
                               write_run_config)
from grdnet_tf.training.checkpoints import TrainState, training_checkpoint

from helpers_config import REPO_ROOT, TINY_CONFIG, load_tiny_config  # noqa: F401


def make_tiny_run(model_dir, seed=0, steps=2, image_size=(32, 32), channels=3,
                  threshold=0.5, overrides=None):
    """Trains the tiny config for `steps` steps on random data and writes a run directory.

    Args:
        model_dir: run directory to create (config.json, checkpoints/, calibration.json).
        seed: seeds the weights and the random training data.
        steps: number of `train_step` calls (batch size from the tiny config).
        image_size: (height, width) of the model; channels: 1 or 3.
        threshold: stored in calibration.json; None writes no calibration.
        overrides: {dotted key: value} applied to the tiny config (e.g. patch mode).

    Returns the frozen config of the run.
    """
    import keras

    config = load_tiny_config()
    config.seed = seed
    config.data.image_size = tuple(image_size)
    config.data.channels = channels
    config = config_lib.with_overrides(config, overrides or {})

    keras.utils.set_random_seed(seed)
    model = build_grdnet(config, compile=True)
    height, width = config.data.image_size

    rng = np.random.default_rng(seed)
    batch = config.train.batch_size
    for _ in range(steps):
        image = rng.random((batch, height, width, channels), dtype=np.float32)
        mask = (rng.random((batch, height, width, 1)) > 0.8).astype(np.float32)
        perturbed = np.where(mask > 0, rng.random(image.shape, dtype=np.float32), image)
        model.train_step({keys.IMAGE: tf.constant(image),
                          keys.PERTURBED: tf.constant(perturbed),
                          keys.MASK: tf.constant(mask),
                          keys.ROI: tf.ones((batch, height, width, 1))})

    write_run_config(config, model_dir)
    state = TrainState()
    state.step.assign(steps)
    manager = tf.train.CheckpointManager(training_checkpoint(model, state),
                                         os.path.join(model_dir, CHECKPOINT_DIR),
                                         max_to_keep=1)
    manager.save()
    if threshold is not None:
        write_json(os.path.join(model_dir, CALIBRATION_JSON),
                   {"threshold": float(threshold), "quantile": 0.99, "num_images": 0})
    return config
