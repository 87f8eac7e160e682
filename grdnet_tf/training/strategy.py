"""Distribution strategies for `train.strategy` and who is the chief."""
import json
import os

import tensorflow as tf
from absl import logging

from grdnet_tf import choices


def make_strategy(name):
    """auto: MirroredStrategy over all GPUs when there is more than one, else the default.
    mirrored: MirroredStrategy over all local devices (GPUs, or the CPU).
    multi_worker: MultiWorkerMirroredStrategy configured by the TF_CONFIG variable.
    default: the default (single-device) strategy.
    """
    choices.check("strategy", name, choices.STRATEGIES)
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError("strategy='multi_worker' needs the TF_CONFIG environment variable "
                             "(cluster and task of this worker)")
        _check_onednn_off_for_multi_worker()
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
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
        tf_config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
        task = tf_config.get("task", {})
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
        cluster = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}").get("cluster", {})
        return "chief" not in cluster
    return False
