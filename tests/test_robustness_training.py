"""Training never loses a run (issue 14, items 1-4): corrupt or missing checkpoint state,
truncated checkpoints, exploding weights, a kill -9 between the epoch's files, two writers
and resuming with other config or data.

One short base run (1 epoch x 2 steps, a checkpoint every step) is trained once; each case
works on a copy of it, so most cases cost one resumed `train()` or none (refusals happen
before anything is built or written).
"""
import os
import shutil
import signal
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

from grdnet_tf import config as config_lib
from grdnet_tf import run_dir
from grdnet_tf.models import build_grdnet
from grdnet_tf.training import checkpoints as ckpt_lib
from grdnet_tf.training import train_lib
from dist_worker import make_config
from helpers_run import REPO_ROOT


def base_config(**train):
    return make_config(**{"epochs": 1, "steps_per_epoch": 2, "checkpoint_every_steps": 1,
                          "image_every_steps": 100, **train})


@pytest.fixture(scope="module")
def base_run(demo_category, tmp_path_factory):
    model_dir = str(tmp_path_factory.mktemp("base") / "run")
    train_lib.train(base_config(), demo_category, model_dir)
    return model_dir


def copy_run(base_run, tmp_path):
    model_dir = str(tmp_path / "run")
    shutil.copytree(base_run, model_dir)
    return model_dir


def ckpt_dir(model_dir):
    return os.path.join(model_dir, run_dir.CHECKPOINT_DIR)


def latest_weights(config, model_dir):
    """(path, every variable of networks and optimizers) of the latest checkpoint."""
    model = build_grdnet(config, compile=True)
    path = tf.train.latest_checkpoint(ckpt_dir(model_dir))
    ckpt_lib.training_checkpoint(model, ckpt_lib.TrainState()).restore(
        path).assert_existing_objects_matched()
    return path, [v.numpy() for v in model.variables + [
        w for o in model.optimizers.values() for w in o.variables]]


def test_missing_state_file_resumes_from_the_newest_checkpoint(base_run, demo_category,
                                                               tmp_path):
    model_dir = copy_run(base_run, tmp_path)
    os.remove(os.path.join(ckpt_dir(model_dir), "checkpoint"))
    messages = []
    summary = train_lib.train(base_config(epochs=2), demo_category, model_dir,
                              log_fn=messages.append)
    assert os.path.basename(summary["resumed_from"]) == "ckpt-2"
    assert (summary["epochs"], summary["steps"]) == (2, 4)
    assert any("restored" in m and "ckpt-2" in m and "missing or corrupt" in m
               for m in messages)
    history = run_dir.read_json(os.path.join(model_dir, run_dir.HISTORY_JSON))
    assert [(h["epoch"], h["step"]) for h in history] == [(1, 2), (2, 4)]


def test_corrupt_state_and_truncated_newest_checkpoint_fall_back(base_run, demo_category,
                                                                 tmp_path):
    model_dir = copy_run(base_run, tmp_path)
    with open(os.path.join(ckpt_dir(model_dir), "checkpoint"), "w") as f:
        f.write("model_checkpoint_path: {{{ garbage")
    data = os.path.join(ckpt_dir(model_dir), "ckpt-2.data-00000-of-00001")
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)
    messages = []
    summary = train_lib.train(base_config(epochs=2), demo_category, model_dir,
                              log_fn=messages.append)
    assert os.path.basename(summary["resumed_from"]) == "ckpt-1"
    fallback, = [m for m in messages if m.startswith("restored")]
    assert "ckpt-1" in fallback and "ckpt-2: IndexError" in fallback
    # Step 2 was redone; the state file lists what the manager keeps.
    assert summary["steps"] == 4
    assert os.path.basename(tf.train.latest_checkpoint(ckpt_dir(model_dir))) == "ckpt-4"


def test_unreadable_checkpoints_are_never_started_over(base_run, demo_category, tmp_path):
    model_dir = copy_run(base_run, tmp_path)
    for name in os.listdir(ckpt_dir(model_dir)):
        if name.endswith(".index"):
            with open(os.path.join(ckpt_dir(model_dir), name), "wb") as f:
                f.write(b"not an sstable")
    before = sorted(os.listdir(ckpt_dir(model_dir)))
    history = run_dir.read_json(os.path.join(model_dir, run_dir.HISTORY_JSON))
    with pytest.raises(ckpt_lib.CheckpointRestoreError, match="none can be restored") as e:
        train_lib.train(base_config(), demo_category, model_dir)
    assert "ckpt-2:" in str(e.value) and "ckpt-1:" in str(e.value)
    assert sorted(os.listdir(ckpt_dir(model_dir))) == before
    assert run_dir.read_json(os.path.join(model_dir, run_dir.HISTORY_JSON)) == history


def test_results_without_checkpoints_are_not_overwritten(base_run, demo_category, tmp_path):
    model_dir = copy_run(base_run, tmp_path)
    shutil.rmtree(ckpt_dir(model_dir))
    with pytest.raises(ValueError, match="starting from step 1 would overwrite") as e:
        train_lib.train(base_config(), demo_category, model_dir)
    assert "history.json" in str(e.value) and "best" in str(e.value)
    assert not os.path.exists(ckpt_dir(model_dir))


def test_exploding_update_is_never_saved(base_run, demo_category, tmp_path):
    """learning_rate=1e30 gives finite weights of ~1e30 whose next loss is NaN: the guard
    must stop before saving them, so the named checkpoint is the good one."""
    model_dir = copy_run(base_run, tmp_path)
    config = config_lib.with_overrides(base_config(epochs=2),
                                       {"optimizer.learning_rate": 1e30})
    with pytest.raises(FloatingPointError, match="weights after step 3 are not saved") as e:
        train_lib.train(config, demo_category, model_dir)
    assert "ckpt-2" in str(e.value) and "non-finite loss" in str(e.value)
    path, variables = latest_weights(config, model_dir)
    assert os.path.basename(path) == "ckpt-2"
    assert all(np.isfinite(v).all() and np.abs(v).max(initial=0) < 1e6 for v in variables)
    assert [h["epoch"] for h in run_dir.read_json(
        os.path.join(model_dir, run_dir.HISTORY_JSON))] == [1]


def test_guard_rejects_non_finite_weights_and_losses():
    saved = types.SimpleNamespace(latest_checkpoint="run/checkpoints/ckpt-7")
    finite, bad = tf.Variable([1.0, 2.0]), tf.Variable([1.0, np.inf])
    assert ckpt_lib.non_finite_variables([finite]) == []
    assert len(ckpt_lib.non_finite_variables([finite, bad])) == 1
    model = types.SimpleNamespace(
        compute_losses=lambda batch, training: ({"generator_loss": batch * 2.0}, batch),
        segmentator_loss=lambda batch, x_hat, training: tf.reduce_sum(x_hat))
    guard = train_lib.savable_weights_check(model, tf.constant(1.0), [finite])
    guard(8, saved)  # finite weights, finite losses: no error
    with pytest.raises(FloatingPointError, match=r"step 8 .*NaN/Inf.*ckpt-7"):
        train_lib.savable_weights_check(model, tf.constant(1.0), [finite, bad])(8, saved)
    with pytest.raises(FloatingPointError, match=r"generator_loss=inf.*ckpt-7"):
        train_lib.savable_weights_check(model, tf.constant(np.inf), [finite])(8, saved)


# A training in a subprocess that SIGKILLs itself right after the checkpoint of step
# KILL_STEP is written, holding the run's lock.
KILL_SCRIPT = r'''
import os, signal, sys
sys.path.insert(0, os.path.join(sys.argv[1], "tests"))
from dist_worker import make_config
from grdnet_tf.training import train_lib
data_dir, model_dir, kill_step = sys.argv[2], sys.argv[3], int(sys.argv[4])
real_save = train_lib._save
def save(manager, step, chief, *guard):
    path = real_save(manager, step, chief, *guard)
    if manager.directory.endswith("checkpoints") and step == kill_step:
        os.kill(os.getpid(), signal.SIGKILL)
    return path
train_lib._save = save
config = make_config(epochs=2, steps_per_epoch=2, checkpoint_every_steps=100,
                     image_every_steps=100)
train_lib.train(config, data_dir, model_dir)
'''


@pytest.fixture(scope="module")
def killed_run(demo_category, tmp_path_factory):
    """Killed (-9) just after the epoch-1 checkpoint (step 2) was saved."""
    model_dir = str(tmp_path_factory.mktemp("killed") / "run")
    env = {**os.environ, "PYTHONPATH": REPO_ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, REPO_ROOT, demo_category,
                           model_dir, "2"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    return model_dir


def test_kill_after_the_epoch_checkpoint_keeps_best_and_history(killed_run, demo_category):
    model_dir = killed_run
    # The epoch checkpoint commits the epoch: its best checkpoint and history entry exist.
    assert run_dir.read_json(os.path.join(model_dir, run_dir.BEST_DIR, run_dir.BEST_JSON))[
        "epoch"] == 1
    assert [h["epoch"] for h in run_dir.read_json(
        os.path.join(model_dir, run_dir.HISTORY_JSON))] == [1]
    # A stray temporary of an interrupted state-file write is removed on resume, and the
    # dead process's lock does not block.
    stray = os.path.join(ckpt_dir(model_dir), "checkpoint.tmp1234abcd")
    with open(stray, "w") as f:
        f.write("half")
    config = make_config(epochs=2, steps_per_epoch=2, checkpoint_every_steps=100,
                         image_every_steps=100)
    summary = train_lib.train(config, demo_category, model_dir)
    assert os.path.basename(summary["resumed_from"]) == "ckpt-2"
    assert summary["steps"] == 4
    assert not os.path.exists(stray)
    history = run_dir.read_json(os.path.join(model_dir, run_dir.HISTORY_JSON))
    assert [(h["epoch"], h["step"]) for h in history] == [(1, 2), (2, 4)]


def test_a_second_writer_is_refused(base_run, demo_category, tmp_path):
    model_dir = copy_run(base_run, tmp_path)
    with run_dir.RunLock(model_dir):
        with pytest.raises(run_dir.RunLockedError, match=f"pid={os.getpid()}"):
            train_lib.train(base_config(), demo_category, model_dir)
    run_dir.RunLock(model_dir).release()  # free again once the holder is done


def test_resume_with_another_config_or_data_names_the_difference(base_run, demo_category,
                                                                tmp_path):
    model_dir = copy_run(base_run, tmp_path)
    config_json = os.path.join(model_dir, run_dir.CONFIG_JSON)
    with open(config_json) as f:
        before = f.read()
    wider = config_lib.with_overrides(base_config(), {"model.base_width": 8})
    with pytest.raises(ValueError, match=r"(?s)config model\.base_width: 4 in .*config\.json, "
                                         r"now 8.*--resume_with_changes"):
        train_lib.train(wider, demo_category, model_dir)
    other_data = str(tmp_path / "other")
    shutil.copytree(demo_category, other_data)
    os.remove(os.path.join(other_data, "train", "good", "000.png"))
    with pytest.raises(ValueError, match=r"(?s)data data_dir: .*data\.json.*data fingerprint"):
        train_lib.train(base_config(), other_data, model_dir)
    with open(config_json) as f:
        assert f.read() == before
    # Keys that do not change what the checkpoint means may change (epochs here), and an
    # explicit flag accepts the rest, rewriting config.json and data.json.
    changed = config_lib.with_overrides(base_config(epochs=2),
                                        {"synthesis.anomaly_prob": 0.5})
    with pytest.raises(ValueError, match="synthesis.anomaly_prob"):
        train_lib.train(changed, demo_category, model_dir)
    messages = []
    summary = train_lib.train(changed, other_data, model_dir, resume_with_changes=True,
                              log_fn=messages.append)
    assert summary["steps"] == 4
    assert any("--resume_with_changes" in m and "synthesis.anomaly_prob" in m
               for m in messages)
    assert run_dir.load_run_config(model_dir).synthesis.anomaly_prob == 0.5
    assert run_dir.read_json(os.path.join(model_dir, run_dir.DATA_JSON))["data_dir"] == \
        os.path.abspath(other_data)
