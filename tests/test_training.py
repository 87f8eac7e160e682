"""The training loop (grdnet_tf.training.train_lib) and the grdnet-train binary, end to end.

Tiny config with one stage per network (`dist_worker.make_config`) on the demo category of
conftest.py. Each `train()` call costs a train_step trace, so the scenarios share runs:

* `resumed_run`: run 1 (2 epochs x 3 steps, a checkpoint every 2 steps) gets a NaN
  generator loss at step 6 and must stop with FloatingPointError, keeping ckpt-4; run 2 in the
  same model_dir with epochs raised to 3 resumes from ckpt-4 (mid-epoch 2), redoes steps 5-6
  and finishes epoch 3. Its run directory is checked for every artifact.
* `plateau_run`: 4 epochs with a validation loss that never improves; run 1 crashes
  mid-epoch 3 (RuntimeError), run 2 resumes; the learning rates drop after epoch 4.
* the binary's flag errors, in subprocesses.
"""
import json
import math
import os
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

from grdnet_tf import config as config_lib
from grdnet_tf import keys, run_dir
from grdnet_tf.data import pipeline
from grdnet_tf.models import GRDNet, build_grdnet
from grdnet_tf.training import checkpoints as ckpt_lib
from grdnet_tf.training import train_lib
from dist_worker import make_config
from helpers_run import REPO_ROOT, TINY_CONFIG

NAN_STEP = 6
TRAIN_TAGS = {"losses/generator", "losses/adversarial", "losses/contextual", "losses/encoder",
              "losses/discriminator", "losses/segmentator", "losses/total",
              "learning_rate/generator", "learning_rate/discriminator",
              "learning_rate/segmentator", "grad_norm/generator", "grad_norm/discriminator",
              "grad_norm/segmentator", "speed/images_per_second", "images/raw_anomaly_map",
              "images/reconstruction", "images/image", "images/perturbed", "images/mask",
              "images/roi"}


def nan_generator_loss_at(step):
    """GRDNet.compute_losses whose generator loss is NaN at training step `step` (1-based)."""
    real = GRDNet.compute_losses

    def compute_losses(self, data, training):
        scalars, x_hat = real(self, data, training)
        if training:
            current = self.g_optimizer.iterations + 1
            scalars["generator_loss"] += tf.where(current == step, math.nan, 0.0)
        return scalars, x_hat
    return compute_losses


def restore_latest(config, model_dir):
    """A fresh GRDNet + optimizers + TrainState restored from the latest training checkpoint."""
    model = build_grdnet(config, compile=True)
    state = ckpt_lib.TrainState()
    path = tf.train.latest_checkpoint(os.path.join(model_dir, run_dir.CHECKPOINT_DIR))
    ckpt_lib.training_checkpoint(model, state).restore(path).assert_existing_objects_matched()
    return path, model, state


def checkpoint_names(directory):
    state = tf.train.get_checkpoint_state(directory)
    return [os.path.basename(p) for p in state.all_model_checkpoint_paths] if state else []


def read_events(directory):
    """{tag: {step: value}} of every event file in `directory` (images: the tag only)."""
    tags = {}
    for name in sorted(os.listdir(directory)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, name)):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                tags.setdefault(value.tag, {})[event.step] = (
                    float(array) if array.ndim == 0 else None)
    return tags


@pytest.fixture(scope="module")
def resumed_run(demo_category, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("resumed") / "run")
    config1 = make_config(epochs=2, steps_per_epoch=3, checkpoint_every_steps=2,
                          image_every_steps=2)
    run = types.SimpleNamespace(model_dir=model_dir, config1=config1, error=None)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GRDNet, "compute_losses", nan_generator_loss_at(NAN_STEP))
        try:
            train_lib.train(config1, demo_category, model_dir)
        except FloatingPointError as e:
            run.error = e
    ckpt_dir = os.path.join(model_dir, run_dir.CHECKPOINT_DIR)
    run.checkpoints_after_nan = checkpoint_names(ckpt_dir)
    run.history_after_nan = run_dir.read_json(os.path.join(model_dir, run_dir.HISTORY_JSON))
    path, model, state = restore_latest(config1, model_dir)
    run.restored = dict(path=os.path.basename(path), step=int(state.step),
                        epoch=int(state.epoch), step_in_epoch=int(state.step_in_epoch),
                        iterations=[int(o.iterations) for o in model.optimizers.values()],
                        finite=all(np.isfinite(v.numpy()).all() for v in model.variables + [
                            w for o in model.optimizers.values() for w in o.variables]))

    run.config = make_config(epochs=3, steps_per_epoch=3, checkpoint_every_steps=2,
                             image_every_steps=2)
    run.datasets = []
    real_train_dataset = pipeline.train_dataset

    def train_dataset(*args, **kwargs):
        ds = real_train_dataset(*args, **kwargs)
        run.datasets.append((kwargs.get("start_step", 0), ds,
                             real_train_dataset(*args, **{**kwargs, "start_step": 0})))
        return ds

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "train_dataset", train_dataset)
        run.summary = train_lib.train(run.config, demo_category, model_dir)
    return run


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(resumed_run):
    run = resumed_run
    assert isinstance(run.error, FloatingPointError)
    message = str(run.error)
    assert f"non-finite loss at epoch 2, step {NAN_STEP}" in message
    assert "generator_loss=nan" in message and "ckpt-4" in message
    # Checkpoints at steps 2 (mid-epoch), 3 (epoch end), 4 (mid-epoch); nothing after the NaN.
    assert run.checkpoints_after_nan == ["ckpt-2", "ckpt-3", "ckpt-4"]
    assert [h["epoch"] for h in run.history_after_nan] == [1]
    assert run.restored == dict(path="ckpt-4", step=4, epoch=1, step_in_epoch=1,
                                iterations=[4, 4, 4], finite=True)


def test_resume_continues_from_the_last_checkpoint(resumed_run):
    run, summary = resumed_run, resumed_run.summary
    # Step 5 (done, not checkpointed) and the NaN step 6 were lost and redone; no more.
    assert os.path.basename(summary["resumed_from"]) == "ckpt-4"
    assert (summary["epochs"], summary["steps"]) == (3, 9)
    model = summary["model"]
    assert [int(o.iterations) for o in model.optimizers.values()] == [9, 9, 9]
    assert all(np.isfinite(v.numpy()).all() for v in model.variables)
    history = run_dir.read_json(os.path.join(run.model_dir, run_dir.HISTORY_JSON))
    assert [(h["epoch"], h["step"]) for h in history] == [(1, 3), (2, 6), (3, 9)]
    # The resumed stream starts at batch 4 of the stream an uninterrupted run reads.
    (start_step, resumed, fresh), = run.datasets  # one stream per run (preview included)
    assert start_step == 4
    first = next(iter(resumed))
    expected = next(iter(fresh.skip(4)))
    different = next(iter(fresh.skip(3)))
    for key in (keys.IMAGE, keys.PERTURBED, keys.MASK, keys.ROI):
        np.testing.assert_array_equal(first[key], expected[key], err_msg=key)
    assert not np.array_equal(first[keys.PERTURBED], different[keys.PERTURBED])


def test_run_directory(resumed_run):
    run, model_dir = resumed_run, resumed_run.model_dir
    # Saves of run 2: 6 (epoch end), 8 (every 2 steps), 9 (epoch end); the 3 newest are kept.
    assert checkpoint_names(os.path.join(model_dir, "checkpoints")) == [
        "ckpt-6", "ckpt-8", "ckpt-9"]
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        assert json.load(f) == json.loads(config_lib.to_json(run.config))
    assert run_dir.load_run_config(model_dir).to_dict() == config_lib.freeze(
        run.config).to_dict()

    history = run_dir.read_json(os.path.join(model_dir, "history.json"))
    for entry in history:
        assert entry["learning_rate"] == pytest.approx(1e-4)
        for name in ("train_total_loss", "train_generator_loss", "train_segmentator_loss",
                     "train_discriminator_loss", "val_total_loss", "val_generator_loss"):
            assert math.isfinite(entry[name]), name
    # The best checkpoint: lowest validation segmentator loss (train.best_metric default).
    best = run_dir.read_json(os.path.join(model_dir, "best", "best.json"))
    best_entry = min(history, key=lambda h: h["val_segmentator_loss"])
    assert best == {"epoch": best_entry["epoch"], "step": best_entry["step"],
                    "metric": "val_segmentator_loss",
                    "value": best_entry["val_segmentator_loss"],
                    "val_total_loss": best_entry["val_total_loss"]}
    assert checkpoint_names(os.path.join(model_dir, "best")) == [f"ckpt-{best['step']}"]

    calibration = run_dir.read_json(os.path.join(model_dir, "calibration.json"))
    assert calibration["num_images"] == 1 and calibration["quantile"] == 0.99
    assert 0.0 <= calibration["threshold"] <= 1.0
    assert calibration["threshold"] == pytest.approx(run.summary["threshold"])
    assert os.path.basename(calibration["checkpoint"]) == f"ckpt-{best['step']}"
    assert sorted(os.listdir(model_dir)) == [".lock", "best", "calibration.json",
                                             "checkpoints", "config.json", "data.json",
                                             "history.json", "logs"]


def test_tensorboard_events(resumed_run):
    logs = os.path.join(resumed_run.model_dir, "logs")
    train = read_events(os.path.join(logs, "train"))
    assert TRAIN_TAGS <= set(train), TRAIN_TAGS - set(train)
    # Run 1 logged steps 1-5, run 2 steps 5-9 (step 6 of run 1 was NaN and never logged).
    assert sorted(train["losses/generator"]) == list(range(1, 10))
    assert sorted(train["images/raw_anomaly_map"]) == [2, 4, 6, 8]
    last = resumed_run.summary["last_train_logs"]
    assert train["losses/generator"][9] == pytest.approx(last["generator_loss"])
    assert train["grad_norm/segmentator"][9] == pytest.approx(last["segmentator_grad_norm"])
    assert train["learning_rate/generator"][9] == pytest.approx(1e-4)
    assert train["speed/images_per_second"][9] > 0
    validation = read_events(os.path.join(logs, "validation"))
    assert sorted(validation["losses/total"]) == [3, 6, 9]
    history = run_dir.read_json(os.path.join(resumed_run.model_dir, "history.json"))
    assert validation["losses/total"][9] == pytest.approx(history[-1]["val_total_loss"])


CRASH_STEP = 6


@pytest.fixture(scope="module")
def plateau_run(demo_category, tmp_path_factory):
    """4 epochs x 2 steps (a checkpoint every 3 steps) whose validation losses are the same
    every epoch, so they never improve after epoch 1. Run 1 crashes (RuntimeError) in step
    6, the middle of epoch 3; run 2 resumes and finishes."""
    model_dir = str(tmp_path_factory.mktemp("plateau") / "run")
    config = make_config(epochs=4, steps_per_epoch=2, checkpoint_every_steps=3,
                         image_every_steps=100)
    run = types.SimpleNamespace(model_dir=model_dir, error=None)
    real_check = train_lib._check_finite

    def crash_at_step(logs, epoch, step, manager):
        if step == CRASH_STEP:
            raise RuntimeError(f"simulated crash in step {step}")
        return real_check(logs, epoch, step, manager)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GRDNet, "test_step", lambda self, data: {
            "total_loss": tf.constant(2.0), "segmentator_loss": tf.constant(0.5)})
        with mp.context() as crash:
            crash.setattr(train_lib, "_check_finite", crash_at_step)
            try:
                train_lib.train(config, demo_category, model_dir)
            except RuntimeError as e:
                run.error = e
        run.checkpoints_after_crash = checkpoint_names(os.path.join(model_dir, "checkpoints"))
        run.history_after_crash = run_dir.read_json(os.path.join(model_dir, "history.json"))
        run.summary = train_lib.train(config, demo_category, model_dir)
    return run


def test_interrupted_run_resumes_from_the_last_checkpoint(plateau_run):
    run = plateau_run
    assert "simulated crash in step 6" in str(run.error)
    # Checkpoints at steps 2 (epoch end), 3 (every 3 steps), 4 (epoch end); step 5 is lost.
    assert run.checkpoints_after_crash == ["ckpt-2", "ckpt-3", "ckpt-4"]
    assert [h["epoch"] for h in run.history_after_crash] == [1, 2]
    summary = run.summary
    assert os.path.basename(summary["resumed_from"]) == "ckpt-4"
    assert (summary["epochs"], summary["steps"]) == (4, 8)
    # Steps 5 and 6 were redone, so the optimizers made as many updates as without the crash.
    assert [int(o.iterations) for o in summary["model"].optimizers.values()] == [8, 8, 8]
    history = run_dir.read_json(os.path.join(run.model_dir, "history.json"))
    assert [(h["epoch"], h["step"]) for h in history] == [(1, 2), (2, 4), (3, 6), (4, 8)]


def test_update_plateau():
    """The reduce-on-plateau rule, step by step from TrainState's initial (inf, 0, 1.0)."""
    best, wait, scale = math.inf, 0, 1.0
    steps = []
    for val_loss in (3.0, 2.0, 2.5, 2.2, 1.0, 1.0, 1.0, 1.0):
        best, wait, scale, reduced = train_lib.update_plateau(best, wait, scale, val_loss,
                                                              patience=2, factor=0.5)
        steps.append((best, wait, scale, reduced))
    assert steps == [(3.0, 0, 1.0, False), (2.0, 0, 1.0, False),
                     (2.0, 1, 1.0, False), (2.0, 0, 0.5, True),    # 2 epochs without a new best
                     (1.0, 0, 0.5, False), (1.0, 1, 0.5, False),   # equal is no improvement
                     (1.0, 0, 0.25, True), (1.0, 1, 0.25, False)]
    assert train_lib.update_plateau(2.0, 0, 1.0, 2.5, patience=1, factor=0.1) == (
        2.0, 0, 0.1, True)
    assert train_lib.update_plateau(2.0, 3, 0.1, 1.5, patience=1, factor=0.1) == (
        1.5, 0, 0.1, False)


def test_plateau_reduces_every_learning_rate(plateau_run):
    model_dir, summary = plateau_run.model_dir, plateau_run.summary
    reduced = 1e-4 * math.exp(-0.1)
    rates = {name: float(o.learning_rate) for name, o in summary["model"].optimizers.items()}
    assert rates == pytest.approx(dict.fromkeys(("generator", "discriminator", "segmentator"),
                                                reduced), rel=1e-6)
    history = run_dir.read_json(os.path.join(model_dir, "history.json"))
    # Epoch 1 improves on +inf; epochs 2-4 do not: after the third one the rate drops (the
    # patience counter of epoch 2 survived the crash and the resume).
    assert [h["learning_rate"] for h in history] == pytest.approx([1e-4] * 3 + [reduced])
    assert [h["val_total_loss"] for h in history] == [2.0] * 4
    assert run_dir.read_json(os.path.join(model_dir, "best", "best.json")) == {
        "epoch": 1, "step": 2, "metric": "val_segmentator_loss", "value": 0.5,
        "val_total_loss": 2.0}
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
    state = {name: reader.get_tensor(f"state/{name}/.ATTRIBUTES/VARIABLE_VALUE")
             for name in ("learning_rate_scale", "plateau_wait", "plateau_best")}
    assert state == {"learning_rate_scale": pytest.approx(math.exp(-0.1)), "plateau_wait": 0,
                     "plateau_best": 2.0}


def test_binary_rejects_bad_flags(demo_category, tmp_path):
    """Non-zero exit, one `error:` line naming the flag or key, nothing in --model_dir. The
    binary checks all of these before it imports TensorFlow (the library checks them too)."""
    missing = tmp_path / "no_such_category"
    data = f"--data_dir={demo_category}"
    cases = {
        "unknown_key": ([data, "--config.loss.nope=1"],
                        ["config override loss.nope: no such config key"]),
        "negative_weight": ([data, "--config.loss.w_con=-1"], ["loss.w_con=-1.0", ">= 0"]),
        "missing_data_dir": ([], ["--data_dir is required"]),
        "missing_folder": ([f"--data_dir={missing}"], [f"--data_dir={missing}",
                                                       "does not exist"]),
    }
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", "grdnet_tf.bin.train", f"--config={TINY_CONFIG}",
             f"--model_dir={tmp_path / name}", *extra],
            cwd=REPO_ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name, (extra, _) in cases.items()}
    try:
        outputs = {name: p.communicate(timeout=60)[1] for name, p in processes.items()}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
    for name, stderr in outputs.items():
        assert processes[name].returncode == 2, (name, stderr[-2000:])
        error_lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert len(error_lines) == 1, (name, stderr[-2000:])
        for fragment in cases[name][1]:
            assert fragment in error_lines[0], (name, error_lines[0])
        assert "Traceback" not in stderr, (name, stderr[-2000:])
        assert not os.path.exists(tmp_path / name), name
    # The library gives the same message for a missing folder (no TensorFlow work done).
    with pytest.raises(FileNotFoundError, match="--data_dir=.*does not exist"):
        train_lib.train(make_config(), str(missing), str(tmp_path / "library"))
    assert not os.path.exists(tmp_path / "library")
