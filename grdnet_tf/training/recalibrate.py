"""Calibrate a trained run again, without retraining (`grdnet-calibrate`).

Training ends with a calibration of the best weights on the validation split
(grdnet_tf.calibration): smoothing window, map sources, image and pixel thresholds. The
`scoring.*` keys decide how it is done (for instance `scoring.calibration_mask_area_*`,
the size of the synthetic anomalies it chooses on, or `scoring.threshold_quantile`), and
they do not change the weights, so a finished run can be calibrated again with other
values. `recalibrate` does that on the run's own validation split (checked against
data.json), with the run locked as a training would lock it, and replaces calibration.json
and config.json, each written atomically after the current ones are copied to
calibration.previous.json and config.previous.json. Exports made before keep the old
thresholds: export again.
"""
import os
import shutil

from absl import logging

from grdnet_tf import calibration as calibration_lib
from grdnet_tf import config as config_lib
from grdnet_tf import run_dir
from grdnet_tf.data import pipeline
from grdnet_tf.training import train_lib

SCORING_PREFIX = "scoring."
PREVIOUS_SUFFIX = ".previous.json"


def previous_path(path):
    """Where `recalibrate` keeps the file it replaces: x.json -> x.previous.json."""
    return path[:-len(".json")] + PREVIOUS_SUFFIX


def recalibrate(model_dir, data_dir, overrides=None, checkpoint="best", log_fn=logging.info):
    """Calibrates the run in `model_dir` again on the validation split of `data_dir`.

    Args:
      model_dir: a trained run (config.json, data.json, checkpoints).
      data_dir: the category folder it was trained on (its training and validation files
        must match data.json, so that the validation split is the run's own).
      overrides: {dotted scoring.* key: value}; other keys shape the weights and are
        refused (train a new run for them).
      checkpoint: "best" (what training calibrates), "latest" or a checkpoint path.
      log_fn: progress lines.

    Returns the new calibration dict (as written to calibration.json).

    Raises ValueError for a non-scoring key, a bad value, other data or no validation
    images, and FileNotFoundError for a missing run or checkpoint; nothing is written then.
    """
    overrides = dict(overrides or {})
    other = sorted(key for key in overrides if not key.startswith(SCORING_PREFIX))
    if other:
        raise ValueError(f"config override {other[0]}: grdnet-calibrate changes scoring.* "
                         "keys only; the other keys shape the trained weights (train a new "
                         "run for them)")
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"--model_dir={model_dir} does not exist")
    with run_dir.RunLock(model_dir):
        run = run_dir.load_for_inference(model_dir, checkpoint)
        config = config_lib.with_overrides(run.config, overrides)
        config_lib.validate(config)
        # Indexing is enough for the check; only the validation images are decoded.
        train_samples, val_samples = train_lib.index_data(config, data_dir)
        record = run_dir.data_record(data_dir, train_samples, val_samples)
        mismatches = run_dir.data_mismatches(model_dir, record, ignore=("data_dir",))
        if mismatches:
            raise ValueError(f"--data_dir={data_dir} is not the data {model_dir} was trained "
                             "on, so its validation split is not the run's:\n  "
                             + "\n  ".join(mismatches))
        val_cache = train_lib.load_images(config, val_samples)
        if not len(val_cache):
            raise ValueError(f"--data_dir={data_dir}: no validation images to calibrate on")
        calibration = calibration_lib.calibrate(
            run.model, config, val_cache, pipeline.load_textures(config), log_fn=log_fn,
            baseline_cache=train_lib.load_baseline_images(config, train_samples))
        calibration["checkpoint"] = run.checkpoint_path
        for name in (run_dir.CALIBRATION_JSON, run_dir.CONFIG_JSON):
            path = os.path.join(model_dir, name)
            if os.path.isfile(path):
                tmp = previous_path(path) + ".tmp"
                shutil.copyfile(path, tmp)
                os.replace(tmp, previous_path(path))
        run_dir.write_calibration(model_dir, calibration)
        run_dir.write_run_config(config, model_dir)
    return run_dir.calibration_record(calibration)
