"""The training checkpoint: counters and plateau state, saved with networks and optimizers.

The run directory around it (file names, JSON files, the inference checkpoint) is
``grdnet_tf.run_dir``.
"""
import os

import numpy as np
import tensorflow as tf


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


class CheckpointRestoreError(ValueError):
    """Checkpoints exist in a folder but none of them can be restored."""


def checkpoint_prefixes(directory):
    """Prefixes of the ``ckpt-N`` checkpoints in `directory` that have an index file,
    newest (largest N) first, whatever the ``checkpoint`` state file says."""
    numbered = []
    for name in tf.io.gfile.listdir(directory) if tf.io.gfile.isdir(directory) else []:
        stem, dot, ext = name.partition(".")
        if ext == "index" and stem.startswith("ckpt-") and stem[5:].isdigit():
            numbered.append((int(stem[5:]), os.path.join(directory, stem)))
    return [path for _, path in sorted(numbered, reverse=True)]


def has_checkpoint_files(directory):
    """True when `directory` holds any ``ckpt-*`` file (readable or not)."""
    return tf.io.gfile.isdir(directory) and any(
        name.startswith("ckpt-") for name in tf.io.gfile.listdir(directory))


def restore_newest_readable(checkpoint, directory, log_fn):
    """Restores the newest checkpoint of `directory` that restores completely.

    The ``checkpoint`` state file may be missing or corrupt (then TensorFlow reports no
    checkpoint at all) and the newest files may be truncated (a kill or a full disk during
    the save): every ``ckpt-N`` is tried from the newest down, and a fallback is logged
    with the reason. Returns the restored path, or None when the folder holds no ``ckpt-*``
    file. Raises CheckpointRestoreError when files exist but none restores: starting from
    step 1 would overwrite them.
    """
    listed = None
    try:
        listed = tf.train.latest_checkpoint(directory)
    except (tf.errors.OpError, ValueError):
        pass
    failures = []
    for path in checkpoint_prefixes(directory):
        try:
            checkpoint.restore(path).assert_existing_objects_matched()
        except (tf.errors.OpError, ValueError, IndexError, AssertionError) as e:
            failures.append(f"{path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
            continue
        if failures or path != listed:
            why = "; ".join(failures) if failures else (
                f"the state file {os.path.join(directory, 'checkpoint')} is missing or "
                f"corrupt" if listed is None else f"the state file names {listed}")
            log_fn(f"restored {path}, the newest readable checkpoint ({why})")
            write_state_file(directory, path)
        return path
    if failures or has_checkpoint_files(directory):
        raise CheckpointRestoreError(
            f"{directory} holds checkpoint files but none can be restored ("
            + ("; ".join(failures) or "no ckpt-N.index file") + "). Refusing to start "
            "training from step 1 over them: move them away or choose another --model_dir")
    return None


def write_state_file(directory, latest):
    """Rewrites the ``checkpoint`` state file of `directory` to list the readable
    checkpoints up to `latest` (after a fallback), so CheckpointManager keeps deleting
    old ones and resumes from `latest`."""
    number = int(os.path.basename(latest)[5:])
    kept = [p for p in reversed(checkpoint_prefixes(directory))
            if int(os.path.basename(p)[5:]) <= number]
    tf.compat.v1.train.update_checkpoint_state(directory, latest,
                                               all_model_checkpoint_paths=kept)


def non_finite_variables(variables):
    """Names of the variables holding NaN or Inf."""
    return [v.path if hasattr(v, "path") else v.name for v in variables
            if not np.isfinite(np.asarray(v.numpy())).all()]
