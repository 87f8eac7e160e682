"""The run directory: its file names, JSON files, checkpoints and loading for inference.

Training writes it; evaluation, prediction and export read it. Layout of ``--model_dir``:

  config.json          resolved config of the run (written at the start)
  data.json            the data it was trained on: folder, image counts, a fingerprint
  .lock                held (flock) by the training that writes the run; the kernel
                       releases it when that process ends, also on kill -9
  checkpoints/         tf.train.CheckpointManager: networks, optimizers, epoch, step,
                       plateau state (resume point; see grdnet_tf.training.checkpoints)
  best/                the checkpoint with the best validation loss (max_to_keep=1) and
                       best.json {epoch, step, metric, value, val_total_loss}
  calibration.json     the threshold calibrated on validation normals
  image_baseline-<hash>.npz   the image map's per-pixel normal statistics, when
                       scoring.image_baseline uses them (named in calibration.json; never
                       overwritten, so calibration.previous.json keeps its own)
  history.json         per-epoch train/validation metrics and learning rates
  logs/train, logs/validation   TensorBoard event files
"""
import dataclasses
import errno
import io
import fcntl
import glob
import hashlib
import json
import os
import shutil
import socket

import numpy as np
import tensorflow as tf

from grdnet_tf import config as config_lib, file_modes
from grdnet_tf.models import build_grdnet

CONFIG_JSON = "config.json"
DATA_JSON = "data.json"
LOCK_FILE = ".lock"
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
    """The JSON value of `path`, None when it does not exist; ValueError naming the file
    when it is not JSON (truncated, hand-edited)."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except ValueError as e:
            raise ValueError(f"{path} is not valid JSON ({e})") from e


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
    try:
        with open(path, encoding="utf-8") as f:
            values = json.load(f)
        if not isinstance(values, dict):
            raise ValueError(f"expected a JSON object, found {type(values).__name__}")
        return config_lib.from_dict(values)
    except (ValueError, TypeError, KeyError, AttributeError, UnicodeDecodeError) as e:
        # json.JSONDecodeError is a ValueError: a truncated file lands here too.
        raise ValueError(f"{path} is not a valid run config ({type(e).__name__}: {e}); "
                         f"restore it or train into a new --model_dir") from e


IMAGE_BASELINE_KEY = "image_baseline"
_BASELINE_ARRAYS = ("mean", "std")


def calibration_record(calibration):
    """`calibration` as JSON: the image baseline's arrays left out (their file, hash and
    shape stay). What calibration.json, export metadata and benchmark results hold."""
    if calibration is None:
        return None
    record = dict(calibration)
    entry = record.get(IMAGE_BASELINE_KEY)
    if entry is not None:
        record[IMAGE_BASELINE_KEY] = {k: v for k, v in entry.items()
                                      if k not in _BASELINE_ARRAYS}
    return record


def write_calibration(model_dir, calibration):
    """Writes ``calibration.json`` atomically; an image baseline's arrays go first into
    ``image_baseline-<sha256[:12]>.npz`` (atomic, never overwritten), which the JSON names
    with its hash. Sets the entry's "file" and "sha256" in `calibration` too."""
    entry = calibration.get(IMAGE_BASELINE_KEY)
    if entry is not None and entry.get("mean") is not None:
        buffer = io.BytesIO()
        np.savez(buffer, **{k: np.asarray(entry[k], np.float32) for k in _BASELINE_ARRAYS})
        payload = buffer.getvalue()
        digest = hashlib.sha256(payload).hexdigest()
        name = f"image_baseline-{digest[:12]}.npz"
        path = os.path.join(model_dir, name)
        if not os.path.isfile(path):
            file_modes.atomic_write(path, payload)
        entry.update(file=name, sha256=digest, shape=list(np.shape(entry["mean"])))
    write_json(os.path.join(model_dir, CALIBRATION_JSON), calibration_record(calibration))


def read_calibration(model_dir):
    """calibration.json of the run (None when absent), with the image baseline's arrays
    loaded into its entry ("mean", "std"); ValueError naming the file when the baseline
    file is missing or is not the one calibration.json names."""
    calibration = read_json(os.path.join(model_dir, CALIBRATION_JSON))
    entry = (calibration or {}).get(IMAGE_BASELINE_KEY)
    if entry is None or not entry.get("file"):
        return calibration
    path = os.path.join(model_dir, os.path.basename(entry["file"]))
    if not os.path.isfile(path):
        raise ValueError(f"{path} (the image baseline named in {CALIBRATION_JSON}) is "
                         "missing: restore it or recalibrate the run (grdnet-calibrate)")
    with open(path, "rb") as f:
        payload = f.read()
    if hashlib.sha256(payload).hexdigest() != entry.get("sha256"):
        raise ValueError(f"{path} is not the image baseline {CALIBRATION_JSON} names (its "
                         "sha256 differs): restore it or recalibrate the run")
    with np.load(io.BytesIO(payload)) as arrays:
        entry.update({k: arrays[k] for k in _BASELINE_ARRAYS})
    return calibration


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


_UNREAD = object()


def load_for_inference(model_dir, checkpoint="best", calibration=_UNREAD):
    """Builds the run's GRDNet from its config.json and restores generator + segmentator.
    `calibration`: the run's `read_calibration` result when the caller has already read
    it (it is not read again), else it is read here."""
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"--model_dir={model_dir} does not exist")
    config = load_run_config(model_dir)
    path = find_checkpoint(model_dir, checkpoint)
    model = build_grdnet(config)
    inference_checkpoint(model).restore(path).expect_partial().assert_existing_objects_matched()
    if calibration is _UNREAD:
        calibration = read_calibration(model_dir)
    threshold = None if calibration is None else float(calibration["threshold"])
    return LoadedRun(config=config, model=model, checkpoint_path=path, threshold=threshold,
                     calibration=calibration)


class RunLockedError(FileExistsError):
    """Another live process trains into the same run directory."""


class RunLock:
    """An exclusive ``flock`` on ``<model_dir>/.lock`` held while a training writes the run.

    The kernel drops the lock when the holding process exits, however it dies (kill -9
    included), so a stale lock never blocks; the file itself stays and records the last
    holder (host, pid) for the error message. ``flock`` is local to one machine: on a
    network file system shared by several hosts it may not exclude a second host.
    """

    def __init__(self, model_dir):
        os.makedirs(model_dir, exist_ok=True)
        self.path = os.path.join(model_dir, LOCK_FILE)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(self._fd, 200, 0).decode("utf-8", "replace").strip()
            os.close(self._fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            raise RunLockedError(
                f"{model_dir} is in use by another training ({holder or 'unknown process'}, "
                f"lock {self.path}); wait for it to finish or use another --model_dir"
            ) from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"host={socket.gethostname()} pid={os.getpid()}\n".encode(), 0)

    def release(self):
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def remove_stale_temporaries(model_dir):
    """Deletes what a killed writer leaves behind (call with the run locked): TensorFlow's
    ``checkpoint.tmp*`` state files and ``ckpt-N_temp`` folders, and the ``*.tmp`` files of
    write_json. Returns the removed paths."""
    patterns = [os.path.join(model_dir, "*.tmp"), os.path.join(model_dir, BEST_DIR, "*.tmp")]
    for sub in (CHECKPOINT_DIR, BEST_DIR):
        patterns += [os.path.join(model_dir, sub, "checkpoint.tmp*"),
                     os.path.join(model_dir, sub, "ckpt-*_temp")]
    removed = sorted({p for pattern in patterns for p in glob.glob(pattern)})
    for path in removed:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
    return removed


def data_record(data_dir, train_samples, val_samples):
    """What data.json records about the training data: the folder, the image counts and
    a fingerprint of the training and validation files (relative paths and sizes)."""
    root = os.path.abspath(data_dir)
    digest = hashlib.sha256()
    for split, samples in (("train", train_samples), ("validation", val_samples)):
        for sample in sorted(samples, key=lambda s: s.path):
            size = os.path.getsize(sample.path) if os.path.isfile(sample.path) else -1
            digest.update(f"{split}\0{os.path.relpath(sample.path, root)}\0{size}\n".encode())
    return {"data_dir": root, "train_images": len(train_samples),
            "validation_images": len(val_samples), "fingerprint": digest.hexdigest()}


# Keys that may change when a run resumes: they change how long and how it is logged and
# saved, or the learning rate (the NaN guard asks for a lower one), not what the
# checkpoint means.
RESUMABLE_KEYS = ("train.epochs", "train.log_every_steps", "train.image_every_steps",
                  "train.checkpoint_every_steps", "train.keep_checkpoints",
                  "train.eval_every_epochs", "train.jit_compile",
                  "train.worker_timeout_seconds",
                  "optimizer.learning_rate", "optimizer.min_learning_rate")


def _flatten(values, prefix=""):
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


# Key groups that may change on resume too: scoring.* only shape the calibration after
# training (and grdnet-calibrate rewrites them in config.json).
RESUMABLE_PREFIXES = ("scoring.",)


def config_differences(old_config, new_config, ignore=RESUMABLE_KEYS,
                       ignore_prefixes=RESUMABLE_PREFIXES):
    """Sorted [(dotted key, old value, new value)] of two configs, without `ignore` and
    the keys starting with one of `ignore_prefixes`."""
    old = _flatten(json.loads(config_lib.to_json(old_config)))
    new = _flatten(json.loads(config_lib.to_json(new_config)))
    return [(key, old.get(key), new.get(key)) for key in sorted(set(old) | set(new))
            if key not in ignore and not key.startswith(tuple(ignore_prefixes))
            and old.get(key) != new.get(key)]


def resume_mismatches(model_dir, config, record):
    """Why resuming `model_dir` with `config` on the data `record` is not the same run:
    lines naming each differing config key (against config.json) and data field (against
    data.json); [] when they agree or the run has no config.json yet."""
    if not os.path.isfile(os.path.join(model_dir, CONFIG_JSON)):
        return []
    lines = [f"config {key}: {old!r} in {os.path.join(model_dir, CONFIG_JSON)}, now {new!r}"
             for key, old, new in config_differences(load_run_config(model_dir), config)]
    return lines + data_mismatches(model_dir, record)


def data_mismatches(model_dir, record, ignore=()):
    """Lines naming each field of the data `record` (`data_record`) that differs from the
    run's data.json, except `ignore`; [] when they agree or there is no data.json."""
    recorded = read_json(os.path.join(model_dir, DATA_JSON))
    if recorded is None:
        return []
    return [f"data {key}: {recorded.get(key)!r} in {os.path.join(model_dir, DATA_JSON)}"
            f", now {record.get(key)!r}" for key in sorted(record)
            if key not in ignore and recorded.get(key) != record.get(key)]
