"""Distributed training: MirroredStrategy over two logical CPUs and MultiWorkerMirroredStrategy
with two local workers, each in subprocesses running tests/dist_worker.py (logical devices
and the worker cluster must be configured before TensorFlow initialises)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

from grdnet_tf.training import strategy as strategy_lib
from helpers_run import REPO_ROOT

WORKER = os.path.join(REPO_ROOT, "tests", "dist_worker.py")
TIMEOUT = 900  # a hang guard, not a timing check: on 2 idle cores the workers take 1-2 min, under load 5+
RUN_ENTRIES = [".lock", "best", "calibration.json", "checkpoints", "config.json", "data.json",
               "history.json", "logs"]


def _env(**extra):
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _run_all(commands, timeout=TIMEOUT):
    """Starts every (args, env) at once; waits at most `timeout` s for all of them; kills
    them all on timeout. Returns [(returncode, stderr)]."""
    processes = [subprocess.Popen(args, cwd=REPO_ROOT, env=env, text=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for args, env in commands]
    deadline = time.monotonic() + timeout
    try:
        results = []
        for process in processes:
            _, stderr = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((process.returncode, stderr))
        return results
    except subprocess.TimeoutExpired:
        pytest.fail(f"distributed workers did not finish within {timeout} s")
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="module")
def runs(demo_category, tmp_path_factory):
    """Runs the mirrored worker and the two multi-worker workers at the same time (they
    spend much of their time tracing single-threaded or waiting for each other)."""
    root = tmp_path_factory.mktemp("distributed")
    (root / "mirrored").mkdir()
    commands = [([sys.executable, WORKER, "mirrored", demo_category,
                  str(root / "mirrored" / "run"), str(root / "mirrored")], _env())]
    results = _run_all(commands + _multi_worker_commands(demo_category, root))
    if any(code == -signal.SIGSEGV for code, _ in results[1:]):
        # TF 2.21's CPU collectives crash now and then (docs/tf-notes.md): one more try
        # of the pair, from scratch; a second crash or any other failure still fails.
        warnings.warn(f"multi-worker pair crashed (SIGSEGV), retried once: "
                      f"{[code for code, _ in results[1:]]}")
        shutil.rmtree(root / "multi_worker", ignore_errors=True)
        results = results[:1] + _run_all(_multi_worker_commands(demo_category, root))
    return root, results


def _multi_worker_commands(demo_category, root):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    commands = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        # TF_ENABLE_ONEDNN_OPTS=0 as grdnet-train sets it (grdnet_tf.training.strategy).
        commands.append(([sys.executable, WORKER, "multi_worker", demo_category,
                          str(root / "multi_worker" / "run"), str(root / f"worker{index}.json")],
                         _env(TF_CONFIG=tf_config, TF_ENABLE_ONEDNN_OPTS="0")))
    return commands


@pytest.fixture(scope="module")
def mirrored_result(runs):
    root, results = runs
    returncode, stderr = results[0]
    assert returncode == 0, stderr[-3000:]
    with open(root / "mirrored" / "result.json", encoding="utf-8") as f:
        result = json.load(f)
    result["weights"] = dict(np.load(root / "mirrored" / "weights.npz"))
    result["model_dir"] = root / "mirrored" / "run"
    return result


def test_mirrored_step_equals_single_device_step(mirrored_result):
    result = mirrored_result
    assert result["replicas"] == 2
    # Same losses: the replica means of the per-replica shares are the global batch means.
    for name in ("total_loss", "generator_loss", "adversarial_loss", "contextual_loss",
                 "encoder_loss", "discriminator_loss", "segmentator_loss"):
        np.testing.assert_allclose(result["mirrored"][name], result["single"][name],
                                   rtol=1e-5, err_msg=name)
    # Same updated weights (SGD: an update R times too large would show up here).
    weights = result["weights"]
    for i, name in enumerate(result["variables"]):
        before, single, mirrored = (weights[f"{k}_{i}"] for k in ("before", "single",
                                                                  "mirrored"))
        update = np.abs(single - before).max()
        np.testing.assert_allclose(mirrored, single, rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(mirrored - before, single - before, rtol=0,
                                   atol=1e-4 * update + 1e-7, err_msg=name)
    updates = [np.abs(weights[f"single_{i}"] - weights[f"before_{i}"]).max()
               for i in range(len(result["variables"]))]
    assert sum(u > 0 for u in updates) >= 0.9 * len(updates)


def test_train_lib_runs_under_mirrored_strategy(mirrored_result):
    train = mirrored_result["train"]
    model_dir = mirrored_result["model_dir"]
    assert (train["epochs"], train["steps"]) == (1, 2)
    assert train["optimizer_iterations"] == [2, 2, 2]
    assert train["variable_type"] == "MirroredVariable"
    assert all(np.isfinite(v) for v in train["last_train_logs"].values())
    assert os.path.basename(train["checkpoint"]) == "ckpt-2"
    assert sorted(os.listdir(model_dir)) == RUN_ENTRIES


def test_multi_worker_training(runs):
    root, results = runs
    model_dir = root / "multi_worker" / "run"
    for index, (returncode, stderr) in enumerate(results[1:]):
        assert returncode == 0, (index, stderr[-3000:])
    outputs = []
    for index in range(2):
        with open(root / f"worker{index}.json", encoding="utf-8") as f:
            outputs.append(json.load(f))
    for index, output in enumerate(outputs):
        assert output["task"] == {"type": "worker", "index": index}
        assert (output["epochs"], output["steps"]) == (1, 2)
        assert output["optimizer_iterations"] == [2, 2, 2]
    # Both workers saw the same (all-reduced) losses and hold the same weights.
    for name in ("total_loss", "generator_loss", "discriminator_loss", "segmentator_loss"):
        assert outputs[0]["last_train_logs"][name] == pytest.approx(
            outputs[1]["last_train_logs"][name], rel=1e-6), name
    assert outputs[0]["trainable"] == outputs[1]["trainable"]
    # Both take the same best-checkpoint and plateau decisions (same validation loss).
    assert outputs[0]["best_val_loss"] == outputs[1]["best_val_loss"]
    # Only the chief calibrates (calibration.json).
    assert 0.0 <= outputs[0]["threshold"] <= 1.0 and outputs[1]["threshold"] is None
    # Only the chief (worker 0) wrote into model_dir; no scratch folders are left behind.
    assert sorted(os.listdir(model_dir)) == RUN_ENTRIES
    assert sorted(os.listdir(model_dir / "checkpoints")) == [
        "checkpoint", "ckpt-1.data-00000-of-00001", "ckpt-1.index",
        "ckpt-2.data-00000-of-00001", "ckpt-2.index"]
    assert sorted(os.listdir(model_dir / "logs")) == ["train", "validation"]
    assert len(os.listdir(model_dir / "logs" / "train")) == 1


@pytest.mark.skipif(not strategy_lib._onednn_enabled(), reason="oneDNN is off here")
def test_multi_worker_on_cpu_refuses_onednn(monkeypatch):
    # TensorFlow 2.21 workers corrupt the heap in the gradient all-reduce with oneDNN (see
    # grdnet_tf.training.strategy): a clear error instead of a SIGSEGV in the first step.
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["127.0.0.1:1"]},
                                                "task": {"type": "worker", "index": 0}}))
    with pytest.raises(ValueError, match="TF_ENABLE_ONEDNN_OPTS=0"):
        strategy_lib.make_strategy("multi_worker")
