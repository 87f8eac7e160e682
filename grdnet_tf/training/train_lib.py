"""GRD-Net training: one loop, read top to bottom, for every distribution strategy.

`train(config, data_dir, model_dir)`:
  1. resolve the strategy; lock `model_dir` (run_dir.RunLock); refuse to resume checkpoints
     made with another config or data (check_resume); build GRDNet, its three optimizers and
     the train state inside the strategy scope; restore the newest readable checkpoint of
     `model_dir` when there is one (resume), never start over existing results;
  2. index and decode the data (train / validation split, ROIs), build the tf.data streams;
  3. per step: `strategy.run(model.train_step)` (discriminator, generator and segmentator
     updates), reduced across replicas; a NaN/Inf loss stops the run before anything is saved;
  4. every `checkpoint_every_steps` and at each epoch end: a checkpoint (networks, optimizers,
     epoch, step, plateau state), so a killed run loses at most the work since then; weights
     that are not finite or give a non-finite loss are never saved (savable_weights_check);
  5. per epoch (`end_epoch`): validation loss (fixed-seed synthetic anomalies on held-out
     normals), reduce-on-plateau over all three optimizers (`update_plateau`), the best
     checkpoint by validation loss, the history entry;
  6. at the end: with the best weights, the smoothing window and the threshold are calibrated
     on the validation split (grdnet_tf.calibration).

The loop is a small custom loop around `GRDNet.train_step` rather than `model.fit`, because
`fit` cannot resume in the middle of an epoch and fails under MultiWorkerMirroredStrategy
(Keras 3.15, see docs/tf-notes.md); `GRDNet` still works with `model.fit` for users who want
it.
Only the chief writes checkpoints that count, summaries, the config and the calibration.
"""
import dataclasses
import math
import os
import shutil
import time

import tensorflow as tf
import keras
from absl import logging

from grdnet_tf import calibration as calibration_lib
from grdnet_tf import config as config_lib
from grdnet_tf import keys, progress, run_dir, run_scoring, scoring
from grdnet_tf.data import mvtec, pipeline
from grdnet_tf.models.grdnet import LOSS_METRICS, build_grdnet, set_precision
from grdnet_tf.training import checkpoints as ckpt_lib
from grdnet_tf.training import strategy as strategy_lib

PREVIEW_IMAGES = 4


@dataclasses.dataclass
class TrainData:
    """Indexed and decoded data of one category."""
    train_samples: list
    val_samples: list
    train_cache: object
    val_cache: object
    texture_cache: object


def check_data_dir(data_dir):
    if not data_dir:
        raise ValueError("--data_dir is required (an MVTec-style category folder)")
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"--data_dir={data_dir} does not exist (an MVTec-style "
                                f"category folder)")


def index_data(config, data_dir, layout=None):
    """(training samples, validation samples) of `data_dir`, without decoding an image (ROIs
    dropped when data.use_roi is off); `layout` as in `load_train_data`."""
    check_data_dir(data_dir)
    kwargs = mvtec.config_kwargs(config)
    if layout is not None:
        kwargs["layout"] = layout
    train_samples, val_samples = mvtec.index_train(data_dir, **kwargs)
    if not config.data.use_roi:
        train_samples = [dataclasses.replace(s, roi_path=None) for s in train_samples]
        val_samples = [dataclasses.replace(s, roi_path=None) for s in val_samples]
    return train_samples, val_samples


def load_images(config, samples):
    """The decoded image cache of `samples` at the config's size, channels and patch scale."""
    return pipeline.load_cache(samples, tuple(config.data.image_size), config.data.channels,
                               config.data.skip_bad_files,
                               patch_scale=float(config.data.patch_scale))


def load_baseline_images(config, train_samples):
    """The decoded training images that scoring.image_baseline takes its per-pixel
    statistics from (`calibration.calibrate`'s baseline_cache), or None when it is "none"
    (then nothing is decoded)."""
    if config.scoring.image_baseline == "none":
        return None
    return load_images(config, train_samples)


def load_train_data(config, data_dir, layout=None):
    """Indexes and decodes the training and validation images of `data_dir` (TrainData).
    `layout`: the one mvtec.detect_layout already found for it (default: config.data.layout,
    "auto" detects it here)."""
    train_samples, val_samples = index_data(config, data_dir, layout)
    train_cache = load_images(config, train_samples)
    val_cache = load_images(config, val_samples)
    if len(train_cache) < config.train.batch_size:
        raise ValueError(f"{data_dir}: {len(train_cache)} training images, fewer than "
                         f"train.batch_size={config.train.batch_size}")
    return TrainData(train_samples, val_samples, train_cache, val_cache,
                     pipeline.load_textures(config))


def _set_learning_rates(model, config, scale):
    lr = max(config.optimizer.learning_rate * float(scale),
             config.optimizer.min_learning_rate)
    for optimizer in model.optimizers.values():
        optimizer.learning_rate = lr
    return lr


def _scalar_logs(logs):
    return {name: float(value) for name, value in logs.items()}


def _check_finite(logs, epoch, step, manager):
    bad = [name for name, value in logs.items() if not math.isfinite(value)]
    if bad:
        raise FloatingPointError(
            f"non-finite loss at epoch {epoch + 1}, step {step}: "
            f"{', '.join(f'{n}={logs[n]}' for n in bad)}. Training stopped; the last good "
            f"checkpoint ({manager.latest_checkpoint or 'none'}) is intact. Lower "
            f"optimizer.learning_rate or check the data.")


class Summaries:
    """TensorBoard writers (no-op on non-chief workers)."""

    def __init__(self, model_dir, chief):
        if chief:
            logs = os.path.join(model_dir, run_dir.LOGS_DIR)
            self.train = tf.summary.create_file_writer(os.path.join(logs, "train"))
            self.validation = tf.summary.create_file_writer(os.path.join(logs, "validation"))
        else:
            self.train = self.validation = tf.summary.create_noop_writer()

    @staticmethod
    def scalars(writer, logs, step):
        with writer.as_default(step=step):
            for name, value in logs.items():
                if name.endswith("_loss"):
                    tag = f"losses/{name[:-len('_loss')]}"
                elif name.endswith("_grad_norm"):
                    tag = f"grad_norm/{name[:-len('_grad_norm')]}"
                else:
                    tag = name
                tf.summary.scalar(tag, value)
        writer.flush()

    def images(self, model, batch, step):
        """X, X_n, M, ROI, X̂ and the anomaly map of a fixed preview batch."""
        outputs = model(batch[keys.PERTURBED], training=False)
        with self.train.as_default(step=step):
            for name, tensor in ((keys.IMAGE, batch[keys.IMAGE]),
                                 (keys.PERTURBED, batch[keys.PERTURBED]),
                                 (keys.MASK, batch[keys.MASK]), (keys.ROI, batch[keys.ROI]),
                                 (keys.RECONSTRUCTION, outputs[keys.RECONSTRUCTION]),
                                 (keys.RAW_ANOMALY_MAP,
                                  outputs[keys.RAW_ANOMALY_MAP][..., None])):
                tf.summary.image(f"images/{name}", tensor, max_outputs=PREVIEW_IMAGES)
        self.train.flush()


def _checkpoint_manager(checkpoint, model_dir, sub, chief, max_to_keep, task_id):
    """Non-chief workers must save too (collectives); they write to a scratch folder."""
    directory = os.path.join(model_dir, sub) if chief else os.path.join(
        model_dir, f".worker{task_id}-{sub}")
    return tf.train.CheckpointManager(checkpoint, directory, max_to_keep=max_to_keep)


def savable_weights_check(model, probe_batch, variables):
    """A guard(step, manager) called before every save: raises FloatingPointError when the
    weights about to be saved hold NaN/Inf or give a non-finite loss on `probe_batch`.

    The loss of a training step is computed before the update it produces, so a finite
    loss does not prove that the updated weights are usable (an exploding learning rate
    gives finite weights of 1e30 whose next loss is NaN); the probe is a forward pass in
    inference mode, which changes no state.
    """
    @tf.function
    def probe(batch):
        scalars, x_hat = model.compute_losses(batch, training=False)
        scalars["segmentator_loss"] = model.segmentator_loss(batch, x_hat, training=False)
        return scalars

    def guard(step, manager):
        bad = ckpt_lib.non_finite_variables(variables)
        if bad:
            problem = (f"{len(bad)} variable(s) hold NaN/Inf (e.g. "
                       f"{', '.join(bad[:3])})")
        else:
            losses = _scalar_logs(probe(probe_batch))
            bad = [f"{n}={v}" for n, v in losses.items() if not math.isfinite(v)]
            problem = f"they give a non-finite loss ({', '.join(bad)})" if bad else ""
        if problem:
            raise FloatingPointError(
                f"the weights after step {step} are not saved: {problem}. Training stopped; "
                f"the last good checkpoint ({manager.latest_checkpoint or 'none'}) is "
                f"intact. Lower optimizer.learning_rate or check the data.")
    return guard


def _save(manager, step, chief, guard=None):
    if guard is not None:
        guard(step, manager)
    path = manager.save(checkpoint_number=step)
    if not chief:
        shutil.rmtree(manager.directory, ignore_errors=True)
    return path


def evaluate_test_split(model, config, data_dir, summaries, step):
    """Test-split metrics of the current weights, for learning curves (logged, never used
    to select checkpoints or thresholds). Uncalibrated: the segmentator map at the scaled
    paper window, and no image baseline (its statistics come with the calibration)."""
    run = run_dir.LoadedRun(config=config, model=model, checkpoint_path=None,
                            threshold=None, calibration=None)
    scorer = run_scoring.Scorer(run, params=scoring.ScoringParams.uncalibrated(config))
    metrics = run_scoring.score_test_split(scorer, data_dir).metrics
    values = {f"test/{k}": metrics[k] for k in ("image_auroc", "pixel_auroc", "aupro")
              if metrics.get(k) is not None}
    Summaries.scalars(summaries.validation, values, step)
    return {f"test_{k.split('/')[1]}": v for k, v in values.items()}


def update_plateau(best, wait, scale, val_loss, patience, factor):
    """Reduce-on-plateau after one validation; returns (best, wait, scale, reduced).

    A validation loss below `best` becomes the new best and resets the wait; after
    `patience` validations without one, the learning-rate scale is multiplied by `factor`
    and the wait starts again.
    """
    if val_loss < best:
        return val_loss, 0, scale, False
    wait += 1
    if wait >= patience:
        return best, 0, scale * factor, True
    return best, wait, scale, False


def validation_logs(model, validation_step, val_ds):
    """Metrics of one pass over the validation stream ({} when it is empty)."""
    model.reset_metrics()
    logs = {}
    for batch in val_ds:
        logs = validation_step(batch)
    return _scalar_logs(logs)


def end_epoch(epoch, train_logs, val_logs, learning_rate, *, model, config, state, manager,
              best_manager, summaries, history, model_dir, data_dir, chief, log_fn,
              guard=None):
    """Plateau, the best checkpoint, the history entry and the epoch-end checkpoint of epoch
    `epoch` (0-based) from its validation logs; returns the (possibly reduced) learning
    rate.

    The epoch-end checkpoint is written last: it commits the epoch. A run killed before it
    resumes from an earlier checkpoint and redoes the epoch, its best checkpoint and its
    history entry (entries past the restored epoch are dropped on resume).
    """
    epochs = int(config.train.epochs)
    step = int(state.step)
    val_loss = val_logs.get("total_loss", float("nan"))
    if val_logs:
        Summaries.scalars(summaries.validation, val_logs, step)
        if not math.isfinite(val_loss):
            raise FloatingPointError(f"non-finite validation loss at epoch {epoch + 1}")
        best, wait, scale, reduced = update_plateau(
            float(state.plateau_best), int(state.plateau_wait),
            float(state.learning_rate_scale), val_loss, config.optimizer.plateau_patience,
            config.optimizer.plateau_factor)
        state.plateau_best.assign(best)
        state.plateau_wait.assign(wait)
        state.learning_rate_scale.assign(scale)
        if reduced:
            learning_rate = _set_learning_rates(model, config, state.learning_rate_scale.numpy())
            log_fn(f"validation loss has not improved for "
                   f"{config.optimizer.plateau_patience} epochs: learning rate -> "
                   f"{learning_rate:.3g}")
    selection = val_logs.get(config.train.best_metric, float("nan"))
    improved = bool(val_logs) and selection < float(state.best_val_loss)
    if improved:
        state.best_val_loss.assign(selection)
    if guard is not None:
        guard(step, manager)
    if improved or not val_logs:
        _save(best_manager, step, chief)
        if chief:
            run_dir.write_json(os.path.join(model_dir, run_dir.BEST_DIR, run_dir.BEST_JSON),
                               {"epoch": epoch + 1, "step": step,
                                "metric": f"val_{config.train.best_metric}",
                                "value": selection if val_logs else None,
                                "val_total_loss": val_loss if val_logs else None})
    entry = {"epoch": epoch + 1, "step": step, "learning_rate": learning_rate,
             **{f"train_{k}": v for k, v in train_logs.items()},
             **{f"val_{k}": v for k, v in val_logs.items()}}
    every = int(config.train.eval_every_epochs)
    if chief and every and ((epoch + 1) % every == 0 or epoch + 1 == epochs):
        entry.update(evaluate_test_split(model, config, data_dir, summaries, step))
    history.append(entry)
    if chief:
        run_dir.write_json(os.path.join(model_dir, run_dir.HISTORY_JSON), history)
    _save(manager, step, chief)  # last: a kill before it redoes the epoch on resume
    picked = f"val_{config.train.best_metric}"
    log_fn(f"epoch {epoch + 1}/{epochs} done: "
           + " ".join(f"{k}={train_logs[k]:.4f}" for k in LOSS_METRICS if k in train_logs)
           + (f" | val total_loss={val_loss:.4f} | {picked}={selection:.4f} "
              f"(best checkpoint by {picked}"
              + (": new best)" if improved else f": {float(state.best_val_loss):.4f} "
                 f"stays)") if val_logs else " | no validation images"))
    return learning_rate


def check_resume(model_dir, config, record, resume_with_changes, log_fn):
    """Refuses (ValueError) to resume a run whose checkpoints were trained with another
    config (keys outside run_dir.RESUMABLE_KEYS) or other data, unless
    `resume_with_changes`; then the differences are logged and config.json / data.json
    are rewritten by the caller."""
    ckpt_dir = os.path.join(model_dir, run_dir.CHECKPOINT_DIR)
    if not ckpt_lib.has_checkpoint_files(ckpt_dir):
        return
    mismatches = run_dir.resume_mismatches(model_dir, config, record)
    if not mismatches:
        return
    listing = "\n  ".join(mismatches)
    if not resume_with_changes:
        raise ValueError(
            f"--model_dir={model_dir} holds a run trained with another config or other "
            f"data:\n  {listing}\nResuming would continue those weights on them. Pass "
            f"--resume_with_changes to resume anyway, or train into a new --model_dir.")
    log_fn(f"resuming with changes (--resume_with_changes):\n  {listing}")


def refuse_fresh_start_over(model_dir):
    """ValueError when `model_dir` has no checkpoint to resume from but other results of a
    run (best/, history.json) that a fresh start would overwrite."""
    left = [path for path in (os.path.join(model_dir, run_dir.BEST_DIR),
                              os.path.join(model_dir, run_dir.HISTORY_JSON))
            if ckpt_lib.has_checkpoint_files(path) or (
                path.endswith(".json") and run_dir.read_json(path))]
    if left:
        raise ValueError(
            f"{os.path.join(model_dir, run_dir.CHECKPOINT_DIR)} has no checkpoint to resume "
            f"from, but {' and '.join(left)} exist: starting from step 1 would overwrite "
            f"them. Move them away or train into a new --model_dir.")


def check_jit_compile(config, strategy):
    """Raises ValueError when `train.jit_compile` cannot compile under `strategy`.

    Under several replicas XLA compiles the forward and backward passes of each replica
    (`GRDNet.replica_train_step`). A synchronised batch norm all-reduces its moments in
    the forward pass, and TensorFlow puts an all-reduce inside an XLA function only when
    every replica is a GPU (elsewhere it becomes a `merge_call`, which an XLA function
    cannot hold).
    """
    if not (config.train.jit_compile and strategy.num_replicas_in_sync > 1
            and config.train.sync_batch_norm and config.model.norm == "batch"):
        return
    devices = [tf.DeviceSpec.from_string(d).device_type
               for d in strategy.extended.worker_devices]
    if any(device != "GPU" for device in devices):
        raise ValueError(
            f"train.jit_compile=True with {strategy.num_replicas_in_sync} replicas on "
            f"{', '.join(sorted(set(devices)))} devices needs train.sync_batch_norm=False: "
            "TensorFlow compiles the synchronised batch norm's all-reduce into XLA only "
            "when every replica is a GPU")


def distributed_train_step(model, strategy, jit_compile=False):
    """A tf.function running one `GRDNet.replica_train_step` per replica on a distributed
    batch; returns the logs averaged over the replicas."""
    with strategy.scope():
        replica_step = model.replica_train_step(jit_compile=jit_compile)

    @tf.function
    def step(batch):
        per_replica = strategy.run(replica_step, args=(batch,))
        return {name: strategy.reduce("MEAN", value, axis=None)
                for name, value in per_replica.items()}
    return step


def train(config, data_dir, model_dir, strategy=None, log_fn=logging.info,
          resume_with_changes=False):
    """Trains (or resumes) a GRD-Net run in `model_dir`; returns a summary dict.

    The chief holds `run_dir.RunLock` on `model_dir` throughout. `resume_with_changes`
    allows resuming checkpoints made with another config or other data (see
    check_resume).
    """
    config_lib.validate(config)
    if not model_dir:
        raise ValueError("--model_dir is required")
    check_data_dir(data_dir)  # before the lock creates model_dir
    layout = mvtec.detect_layout(data_dir, config.data.layout,  # an unknown layout, too
                                 mvtec.FolderLayout.from_config(config.data.folder))
    keras.utils.set_random_seed(config.seed)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    set_precision(config.train.precision)
    strategy = strategy or strategy_lib.make_strategy(
        config.train.strategy, worker_timeout_seconds=config.train.worker_timeout_seconds)
    check_jit_compile(config, strategy)
    chief = strategy_lib.is_chief(strategy)
    _, task_id = strategy_lib.task_info(strategy)
    lock = run_dir.RunLock(model_dir) if chief else None
    try:
        return _train_locked(config, data_dir, layout, model_dir, strategy, chief, task_id,
                             log_fn, resume_with_changes)
    finally:
        if lock is not None:
            lock.release()


def _train_locked(config, data_dir, layout, model_dir, strategy, chief, task_id, log_fn,
                  resume_with_changes):
    data = load_train_data(config, data_dir, layout)
    record = None
    if chief:
        for path in run_dir.remove_stale_temporaries(model_dir):
            log_fn(f"removed {path} (left by an interrupted save)")
        record = run_dir.data_record(data_dir, data.train_samples, data.val_samples)
        check_resume(model_dir, config, record, resume_with_changes, log_fn)
    global_batch = int(config.train.batch_size)
    if global_batch % strategy.num_replicas_in_sync:
        raise ValueError(f"train.batch_size={global_batch} must be divisible by the "
                         f"{strategy.num_replicas_in_sync} replicas")
    steps_per_epoch = int(config.train.steps_per_epoch) or max(
        1, pipeline.items_per_epoch(config, data.train_cache) // global_batch)

    with strategy.scope():
        model = build_grdnet(config, compile=True, precision=config.train.precision)
    # Host-side counters: plain variables (inside the scope they would be MirroredVariables,
    # which int() and float() reject).
    state = ckpt_lib.TrainState()
    checkpoint = ckpt_lib.training_checkpoint(model, state)
    ckpt_dir = os.path.join(model_dir, run_dir.CHECKPOINT_DIR)
    if chief:  # the newest readable checkpoint, whatever the state file says
        latest = ckpt_lib.restore_newest_readable(checkpoint, ckpt_dir, log_fn)
        if not latest:
            refuse_fresh_start_over(model_dir)
    else:  # non-chief workers resume from the chief's checkpoints (shared file system)
        latest = tf.train.latest_checkpoint(ckpt_dir)
        if latest:
            checkpoint.restore(latest).assert_existing_objects_matched()
    manager = _checkpoint_manager(checkpoint, model_dir, run_dir.CHECKPOINT_DIR, chief,
                                  config.train.keep_checkpoints, task_id)
    best_manager = _checkpoint_manager(checkpoint, model_dir, run_dir.BEST_DIR, chief, 1,
                                       task_id)
    resumed_from = None
    if latest:
        resumed_from = latest
        log_fn(f"resuming from {latest} (epoch {int(state.epoch) + 1}, step {int(state.step)})")
    learning_rate = _set_learning_rates(model, config, state.learning_rate_scale.numpy())
    if chief:
        run_dir.write_run_config(config, model_dir)
        run_dir.write_json(os.path.join(model_dir, run_dir.DATA_JSON), record)
    history = ((run_dir.read_json(os.path.join(model_dir, run_dir.HISTORY_JSON)) or [])
               if chief else [])
    history = [h for h in history if h["epoch"] <= int(state.epoch)]

    train_ds = pipeline.train_dataset(config, data.train_cache, global_batch,
                                      start_step=int(state.step),
                                      texture_cache=data.texture_cache)
    iterator = iter(strategy.experimental_distribute_dataset(train_ds))
    val_ds = pipeline.validation_dataset(config, data.val_cache, global_batch,
                                         texture_cache=data.texture_cache)
    # The first batch of this stream, read by a second iterator (the stream is stateless).
    preview = {k: v[:PREVIEW_IMAGES] for k, v in next(iter(train_ds)).items()}
    summaries = Summaries(model_dir, chief)
    guard = savable_weights_check(model, preview, model.variables + [
        v for optimizer in model.optimizers.values() for v in optimizer.variables])

    distributed_step = distributed_train_step(model, strategy, config.train.jit_compile)

    validation_step = tf.function(model.test_step)

    epochs = int(config.train.epochs)
    log_fn(f"training {len(data.train_cache)} images ({len(data.val_cache)} validation), "
           f"{steps_per_epoch} steps/epoch x {epochs} epochs, global batch {global_batch}, "
           f"model_dir {model_dir}")
    last_logs = {}
    bar = progress.TrainingProgress(epochs, steps_per_epoch, global_batch, int(state.step),
                                    config.train.log_every_steps, progress.Display(log_fn))
    while int(state.epoch) < epochs:
        epoch = int(state.epoch)
        model.reset_metrics()
        window_start, window_images = time.perf_counter(), 0
        while int(state.step_in_epoch) < steps_per_epoch:
            logs = _scalar_logs(distributed_step(next(iterator)))
            step = int(state.step) + 1
            _check_finite(logs, epoch, step, manager)
            state.step.assign(step)
            state.step_in_epoch.assign_add(1)
            window_images += global_batch
            last_logs = logs
            if chief:
                bar.step(epoch, int(state.step_in_epoch), step, logs)
            if step % config.train.log_every_steps == 0:
                ips = window_images / max(time.perf_counter() - window_start, 1e-9)
                window_start, window_images = time.perf_counter(), 0
                rates = {f"learning_rate/{n}": learning_rate for n in model.optimizers}
                Summaries.scalars(summaries.train, {**logs, **rates,
                                                    "speed/images_per_second": ips}, step)
            if chief and step % config.train.image_every_steps == 0:
                summaries.images(model, preview, step)
            if (step % config.train.checkpoint_every_steps == 0
                    and int(state.step_in_epoch) < steps_per_epoch):
                _save(manager, step, chief, guard)

        state.epoch.assign(epoch + 1)
        state.step_in_epoch.assign(0)
        learning_rate = end_epoch(
            epoch, last_logs, validation_logs(model, validation_step, val_ds), learning_rate,
            model=model, config=config, state=state, manager=manager,
            best_manager=best_manager, summaries=summaries, history=history,
            model_dir=model_dir, data_dir=data_dir, chief=chief, log_fn=log_fn, guard=guard)

    # Threshold calibration with the best weights on the clean validation normals.
    # Only the chief calibrates (another worker would read best/ while the chief writes it).
    calibration = None
    if len(data.val_cache) and chief:
        best = best_manager.latest_checkpoint
        if best:
            run_dir.inference_checkpoint(model).restore(best).expect_partial()
        calibration = calibration_lib.calibrate(model, config, data.val_cache,
                                                data.texture_cache, log_fn=log_fn,
                                                baseline_cache=data.train_cache)
        calibration["checkpoint"] = best
        run_dir.write_calibration(model_dir, calibration)
    elif chief:
        logging.warning("no validation images: no threshold calibrated; pass --threshold to "
                        "grdnet-eval/grdnet-export")
    for writer in (summaries.train, summaries.validation):
        writer.flush()
    return {"model_dir": model_dir, "epochs": int(state.epoch), "steps": int(state.step),
            "resumed_from": resumed_from, "best_val_loss": float(state.best_val_loss),
            "threshold": None if calibration is None else calibration["threshold"],
            "calibration": run_dir.calibration_record(calibration),
            "last_train_logs": last_logs, "checkpoint": manager.latest_checkpoint,
            "logs_dir": os.path.join(model_dir, run_dir.LOGS_DIR), "model": model}
