"""Config, config.json and TF_CONFIG errors name what is wrong (issue 14 items 2 and 8), and
a multi-worker run whose peer never starts times out with an error naming it."""
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from grdnet_tf import config as config_lib
from grdnet_tf import run_dir
from grdnet_tf.training import strategy as strategy_lib
from helpers_config import REPO_ROOT, load_tiny_config


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 0.0, -1e-4])
def test_learning_rate_must_be_finite_and_positive(value):
    with pytest.raises(ValueError, match="optimizer.learning_rate=.*finite number > 0"):
        config_lib.with_overrides(load_tiny_config(), {"optimizer.learning_rate": value})


@pytest.mark.parametrize("text, reason", [
    ('{"train": {"epochs": 3', "JSONDecodeError"),                # truncated
    ('{"train": {"epochs": "three"}}', "TypeError"),               # wrong type
    ('{"train": {"nope": 1}}', "unknown config key train.nope"),
    ('[1, 2]', "expected a JSON object"),
])
def test_bad_config_json_names_the_file(tmp_path, text, reason):
    path = tmp_path / run_dir.CONFIG_JSON
    path.write_text(text)
    with pytest.raises(ValueError) as e:
        run_dir.load_run_config(str(tmp_path))
    assert str(path) in str(e.value) and reason in str(e.value)


def test_bad_json_file_names_the_file(tmp_path):
    path = tmp_path / "history.json"
    path.write_text('[{"epoch": 1')
    with pytest.raises(ValueError, match=f"{path} is not valid JSON"):
        run_dir.read_json(str(path))


@pytest.mark.parametrize("text", ["{cluster: 1}", "[1]"])
def test_tf_config_that_is_not_a_json_object_names_tf_config(monkeypatch, text):
    monkeypatch.setenv("TF_CONFIG", text)
    with pytest.raises(ValueError, match="TF_CONFIG environment variable"):
        strategy_lib.make_strategy("multi_worker")
    with pytest.raises(ValueError, match="TF_CONFIG environment variable"):
        strategy_lib.task_info(strategy_lib.make_strategy("default"))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_multi_worker_peer_that_never_starts_times_out(tmp_path):
    """Worker 0 of a two-worker TF_CONFIG whose worker 1 is never started: the log says whom
    it waits for, and after train.worker_timeout_seconds an error names the missing peer."""
    peer = f"127.0.0.1:{_free_port()}"
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="2",
               TF_ENABLE_ONEDNN_OPTS="0", TF_CONFIG=json.dumps({
                   "cluster": {"worker": [f"127.0.0.1:{_free_port()}", peer]},
                   "task": {"type": "worker", "index": 0}}))
    script = ("from absl import logging; logging.set_verbosity(logging.INFO)\n"
              "from grdnet_tf.training import strategy\n"
              "strategy.make_strategy('multi_worker', worker_timeout_seconds=2)\n"
              "print('strategy created')\n")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert "strategy created" not in proc.stdout
    assert f"waiting for worker 1 ({peer}) (TF_CONFIG cluster) for up to 2 s" in proc.stderr
    error, = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert "did not come up within 2 s (train.worker_timeout_seconds)" in error
    assert f"not reachable: worker 1 ({peer})" in error
