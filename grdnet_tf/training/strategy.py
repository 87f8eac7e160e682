"""Distribution strategies for `train.strategy` and who is the chief."""
import json
import os
import subprocess
import sys

import tensorflow as tf
from absl import logging

from grdnet_tf import choices


def read_tf_config():
    """The TF_CONFIG environment variable as a dict ({} when unset); ValueError naming
    TF_CONFIG when it is not a JSON object."""
    text = os.environ.get("TF_CONFIG", "") or "{}"
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ValueError(f"the TF_CONFIG environment variable is not valid JSON ({e}): "
                         f"{text[:200]!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"the TF_CONFIG environment variable must be a JSON object with "
                         f"'cluster' and 'task', not {text[:200]!r}")
    return value


def _peers(tf_config):
    """'type index (host:port)' of every other task of the TF_CONFIG cluster."""
    task = tf_config.get("task", {})
    return [f"{kind} {index} ({address})"
            for kind, addresses in sorted(tf_config.get("cluster", {}).items())
            for index, address in enumerate(addresses)
            if (kind, index) != (task.get("type"), int(task.get("index", 0)))]


# The watchdog of _multi_worker_strategy, a separate Python process: TensorFlow's wait for
# the cluster holds the GIL (no Python thread or signal handler runs) and catches SIGTERM.
# It reads its stdin until the strategy exists (EOF), logging every 30 s which peers refuse
# a TCP connection; at the deadline it prints the error and SIGKILLs the waiting process.
_WATCHDOG = r"""
import os, select, signal, socket, sys, time
parent, timeout, peers = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
def down():
    out = []
    for peer in peers:
        host, _, port = peer.rsplit(" (", 1)[1].rstrip(")").rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
        except (OSError, ValueError):
            out.append(peer)
    return ", ".join(out) or "the cluster (every peer accepts connections)"
deadline = time.monotonic() + timeout
while not select.select([sys.stdin], [], [], min(30.0, max(0.0, deadline - time.monotonic())))[0]:
    if time.monotonic() < deadline:
        print(f"multi_worker: still waiting for {down()}", file=sys.stderr, flush=True)
        continue
    print(f"error: multi_worker: the cluster of TF_CONFIG did not come up within {timeout:g} s "
          f"(train.worker_timeout_seconds); not reachable: {down()}. Start every worker, check "
          f"their addresses and ports, or raise the timeout", file=sys.stderr, flush=True)
    os.kill(parent, signal.SIGKILL)
    break
"""


def _multi_worker_strategy(timeout_seconds):
    """MultiWorkerMirroredStrategy, whose constructor waits until every task of TF_CONFIG
    has connected: logs whom it waits for and, after `timeout_seconds` (0: never), a
    watchdog process prints an error naming the missing peers and kills this process
    (nothing of the run is written before the strategy exists)."""
    tf_config = read_tf_config()
    peers = _peers(tf_config)
    logging.info("multi_worker: waiting for %s (TF_CONFIG cluster) %s", ", ".join(peers)
                 or "no peer", f"for up to {timeout_seconds} s" if timeout_seconds else
                 "without a time limit (train.worker_timeout_seconds=0)")
    watchdog = None
    if timeout_seconds and peers:
        watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(timeout_seconds), *peers],
            stdin=subprocess.PIPE)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    finally:
        if watchdog is not None:
            watchdog.stdin.close()
            watchdog.wait()


def make_strategy(name, worker_timeout_seconds=0):
    """auto: MirroredStrategy over all GPUs when there is more than one, else the default.
    mirrored: MirroredStrategy over all local devices (GPUs, or the CPU).
    multi_worker: MultiWorkerMirroredStrategy configured by the TF_CONFIG variable; waits
      up to `worker_timeout_seconds` (0 = forever) for every worker to start.
    default: the default (single-device) strategy.
    """
    choices.check("strategy", name, choices.STRATEGIES)
    if name == "multi_worker":
        if not read_tf_config():
            raise ValueError("strategy='multi_worker' needs the TF_CONFIG environment variable "
                             "(cluster and task of this worker)")
        _check_onednn_off_for_multi_worker()
        strategy = _multi_worker_strategy(worker_timeout_seconds)
    elif name == "mirrored" or (name == "auto" and len(tf.config.list_logical_devices("GPU")) > 1):
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    logging.info("strategy %s with %d replica(s)", type(strategy).__name__,
                 strategy.num_replicas_in_sync)
    return strategy


def _onednn_enabled():
    try:
        from tensorflow.python.util import _pywrap_util_port
        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1").strip().lower() not in ("0", "false")


def _check_onednn_off_for_multi_worker():
    """TensorFlow 2.21 corrupts the heap (the workers die with SIGSEGV/SIGABRT) when
    MultiWorkerMirroredStrategy all-reduces the gradient of a 1x1 stride-2 convolution (the
    projection shortcut of every downsampling residual block) computed by oneDNN on CPU.
    TF_ENABLE_ONEDNN_OPTS=0 avoids it (docs/tf-notes.md); it is read when TensorFlow loads,
    so grdnet-train sets it before importing TensorFlow and library users must set it in the
    environment."""
    if _onednn_enabled() and not tf.config.list_physical_devices("GPU"):
        raise ValueError(
            "strategy='multi_worker' on CPU needs TF_ENABLE_ONEDNN_OPTS=0 in the environment "
            "before TensorFlow is imported (with oneDNN, TensorFlow 2.21 workers crash in the "
            "gradient all-reduce); grdnet-train sets it for you")


def task_info(strategy):
    """(task_type, task_id) of this process; (None, 0) without a cluster."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        task = read_tf_config().get("task", {})
        if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or not task:
            return None, 0
        return task.get("type"), int(task.get("index", 0))
    return resolver.task_type, int(resolver.task_id or 0)


def is_chief(strategy):
    """Only the chief writes checkpoints that count, summaries, configs and exports."""
    task_type, task_id = task_info(strategy)
    if task_type is None or task_type == "chief":
        return True
    if task_type == "worker" and task_id == 0:
        cluster = read_tf_config().get("cluster", {})
        return "chief" not in cluster
    return False
