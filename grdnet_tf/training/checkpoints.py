"""The run directory: checkpoints, the best checkpoint, calibration, and loading for inference.

Layout of ``--model_dir``:

  config.json          resolved config of the run (written at the start)
  checkpoints/         tf.train.CheckpointManager: networks, optimizers, epoch, step,
                       plateau state (resume point)
  best/                the checkpoint with the best validation loss (max_to_keep=1) and
                       best.json {epoch, step, val_loss}
  calibration.json     the threshold calibrated on validation normals
  history.json         per-epoch train/validation metrics and learning rates
  logs/train, logs/validation   TensorBoard event files
"""
import dataclasses
import json
import os

import tensorflow as tf

from grdnet_tf import config as config_lib

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
BEST_JSON = "best.json"
CALIBRATION_JSON = "calibration.json"
HISTORY_JSON = "history.json"


class TrainState(tf.Module):
    """Counters and plateau state saved with every checkpoint.

    Create it outside the strategy scope: the loop reads and sets these on the host
    (int()/float() reject distributed variables); every worker holds the same values.
    """

    def __init__(self):
        super().__init__(name="train_state")
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.step_in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False,
                                         name="step_in_epoch")
        self.best_val_loss = tf.Variable(float("inf"), dtype=tf.float64, trainable=False,
                                         name="best_val_loss")
        self.plateau_best = tf.Variable(float("inf"), dtype=tf.float64, trainable=False,
                                        name="plateau_best")
        self.plateau_wait = tf.Variable(0, dtype=tf.int64, trainable=False, name="plateau_wait")
        self.learning_rate_scale = tf.Variable(1.0, dtype=tf.float64, trainable=False,
                                               name="learning_rate_scale")


def training_checkpoint(model, state):
    """Everything needed to resume: three networks, three optimizers, counters."""
    return tf.train.Checkpoint(generator=model.generator, discriminator=model.discriminator,
                               segmentator=model.segmentator, g_optimizer=model.g_optimizer,
                               d_optimizer=model.d_optimizer, s_optimizer=model.s_optimizer,
                               state=state)


def inference_checkpoint(model):
    """The subset inference needs (restores from a training checkpoint with expect_partial)."""
    return tf.train.Checkpoint(generator=model.generator, segmentator=model.segmentator)


def write_json(path, payload):
    """Atomic JSON write: a reader never sees a half-written file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def read_json(path):
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_calibration(model_dir):
    return read_json(os.path.join(model_dir, CALIBRATION_JSON))


def find_checkpoint(model_dir, which="best"):
    """Path of the checkpoint to use: "best" (falls back to latest), "latest", or a path."""
    if which not in ("best", "latest"):
        if tf.io.gfile.exists(which + ".index"):
            return which
        raise FileNotFoundError(f"--checkpoint={which}: no such checkpoint")
    candidates = [BEST_DIR, CHECKPOINT_DIR] if which == "best" else [CHECKPOINT_DIR]
    for sub in candidates:
        path = tf.train.latest_checkpoint(os.path.join(model_dir, sub))
        if path:
            return path
    raise FileNotFoundError(f"no checkpoint in {model_dir} (looked in "
                            f"{', '.join(os.path.join(model_dir, c) for c in candidates)}): "
                            f"train first with grdnet-train --model_dir={model_dir}")


@dataclasses.dataclass
class LoadedRun:
    """A trained run ready for scoring."""
    config: object
    model: object            # GRDNet with generator and segmentator restored
    checkpoint_path: str
    threshold: float | None  # None when the run has no calibration yet
    calibration: dict | None


def load_for_inference(model_dir, checkpoint="best"):
    """Builds the run's GRDNet from its config.json and restores generator + segmentator."""
    from grdnet_tf.models.grdnet import GRDNet

    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"--model_dir={model_dir} does not exist")
    config = config_lib.load_run_config(model_dir)
    path = find_checkpoint(model_dir, checkpoint)
    model = GRDNet.from_config_dict(config)
    height, width = config.data.image_size
    model.build_networks((height, width, config.data.channels))
    inference_checkpoint(model).restore(path).expect_partial().assert_existing_objects_matched()
    calibration = read_calibration(model_dir)
    threshold = None if calibration is None else float(calibration["threshold"])
    return LoadedRun(config=config, model=model, checkpoint_path=path, threshold=threshold,
                     calibration=calibration)
