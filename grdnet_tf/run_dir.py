"""The run directory: its file names, JSON files, checkpoints and loading for inference.

Training writes it; evaluation, prediction and export read it. Layout of ``--model_dir``:

  config.json          resolved config of the run (written at the start)
  checkpoints/         tf.train.CheckpointManager: networks, optimizers, epoch, step,
                       plateau state (resume point; see grdnet_tf.training.checkpoints)
  best/                the checkpoint with the best validation loss (max_to_keep=1) and
                       best.json {epoch, step, metric, value, val_total_loss}
  calibration.json     the threshold calibrated on validation normals
  history.json         per-epoch train/validation metrics and learning rates
  logs/train, logs/validation   TensorBoard event files
"""
import dataclasses
import json
import os

import tensorflow as tf

from grdnet_tf import config as config_lib
from grdnet_tf.models import build_grdnet

CONFIG_JSON = "config.json"
CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
BEST_JSON = "best.json"
CALIBRATION_JSON = "calibration.json"
HISTORY_JSON = "history.json"
LOGS_DIR = "logs"


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


def write_run_config(config, model_dir) -> str:
    """Writes ``config.json`` atomically into the run directory and returns its path."""
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, CONFIG_JSON)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(config_lib.to_json(config))
    os.replace(tmp, path)
    return path


def load_run_config(model_dir):
    """The run's ``config.json`` as a frozen config (keys added since then get defaults)."""
    path = os.path.join(model_dir, CONFIG_JSON)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: --model_dir={model_dir} is not a "
                                f"grdnet_tf training run")
    with open(path, encoding="utf-8") as f:
        return config_lib.from_dict(json.load(f))


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


def inference_checkpoint(model):
    """The subset inference needs (restores from a training checkpoint with expect_partial)."""
    return tf.train.Checkpoint(generator=model.generator, segmentator=model.segmentator)


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
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"--model_dir={model_dir} does not exist")
    config = load_run_config(model_dir)
    path = find_checkpoint(model_dir, checkpoint)
    model = build_grdnet(config)
    inference_checkpoint(model).restore(path).expect_partial().assert_existing_objects_matched()
    calibration = read_calibration(model_dir)
    threshold = None if calibration is None else float(calibration["threshold"])
    return LoadedRun(config=config, model=model, checkpoint_path=path, threshold=threshold,
                     calibration=calibration)
