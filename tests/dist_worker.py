"""Subprocess side of tests/test_distributed.py; also the fixed batch of the trainer tests.

Logical CPU devices (and MultiWorkerMirroredStrategy's cluster) must be configured before
TensorFlow initialises, so each scenario runs in a fresh process:

  python tests/dist_worker.py mirrored DATA_DIR MODEL_DIR OUT_DIR
      two logical CPUs: one train_step on the same global batch with the default strategy
      and with MirroredStrategy(["/cpu:0", "/cpu:1"]) from identical weights (saved to
      OUT_DIR/weights.npz, losses to OUT_DIR/result.json), then `train_lib.train` under that
      MirroredStrategy for 2 steps in MODEL_DIR.
  python tests/dist_worker.py multi_worker DATA_DIR MODEL_DIR OUT_JSON
      `train_lib.train` with train.strategy="multi_worker" (TF_CONFIG set by the caller).
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
for _path in (os.path.dirname(HERE), HERE):
    if _path not in sys.path:
        sys.path.insert(0, _path)

# make_config is imported from here by test_training.py and test_train_step.py too.
from helpers_config import make_config  # noqa: E402  (after the sys.path set-up)

BATCH = 4
SGD_LEARNING_RATE = 0.5


def fixed_batch(batch=BATCH, size=32, seed=0):
    import numpy as np
    import tensorflow as tf

    from grdnet_tf import keys

    rng = np.random.default_rng(seed)
    image = rng.random((batch, size, size, 3), dtype=np.float32)
    mask = np.zeros((batch, size, size, 1), np.float32)
    mask[:, 6:18, 10:26] = 1
    roi = np.zeros_like(mask)
    roi[:, 4:28, 4:22] = 1
    perturbed = np.where(mask > 0, rng.random(image.shape, dtype=np.float32), image)
    return {keys.IMAGE: tf.constant(image), keys.PERTURBED: tf.constant(perturbed),
            keys.MASK: tf.constant(mask), keys.ROI: tf.constant(roi)}


def _floats(logs):
    return {k: float(v) for k, v in logs.items()}


def mirrored(data_dir, model_dir, out_dir):
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    import keras
    import numpy as np

    from grdnet_tf.models import build_grdnet
    from grdnet_tf.training import train_lib

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    # Group norm: per-replica batch-norm statistics legitimately differ from global ones.
    # SGD: Adam's first steps are invariant to the gradient scale, so they would hide
    # gradients that are R times too large.
    config = make_config()
    config.model.norm = "group"

    def build(scope_strategy):
        with scope_strategy.scope():
            keras.utils.set_random_seed(0)
            model = build_grdnet(config, compile=True, optimizers=[
                keras.optimizers.SGD(SGD_LEARNING_RATE) for _ in range(3)])
        return model

    single = build(tf.distribute.get_strategy())
    replicated = build(strategy)
    replicated.set_weights(single.get_weights())
    batch = fixed_batch()
    before = [v.numpy() for v in single.trainable_variables]

    single_logs = _floats(single.train_step(batch))
    distributed = next(iter(strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensors(batch))))
    per_replica = strategy.run(replicated.train_step, args=(distributed,))
    mirrored_logs = _floats({k: strategy.reduce("MEAN", v, axis=None)
                             for k, v in per_replica.items()})
    arrays = {}
    for i, (b, s, m) in enumerate(zip(before, single.trainable_variables,
                                      replicated.trainable_variables)):
        arrays[f"before_{i}"], arrays[f"single_{i}"], arrays[f"mirrored_{i}"] = (
            b, s.numpy(), m.numpy())
    np.savez(os.path.join(out_dir, "weights.npz"), **arrays)
    result = {"replicas": strategy.num_replicas_in_sync, "single": single_logs,
              "mirrored": mirrored_logs,
              "variables": [v.path for v in single.trainable_variables]}

    # End to end: the training loop under the same strategy (batch norm, Adam).
    summary = train_lib.train(make_config(epochs=1, steps_per_epoch=2, batch_size=BATCH),
                              data_dir, model_dir, strategy=strategy)
    result["train"] = {
        "steps": summary["steps"], "epochs": summary["epochs"],
        "checkpoint": summary["checkpoint"], "threshold": summary["threshold"],
        "last_train_logs": summary["last_train_logs"],
        "variable_type": type(summary["model"].generator.trainable_variables[0].value).__name__,
        "optimizer_iterations": [int(o.iterations.numpy()) for o in
                                 summary["model"].optimizers.values()]}
    with open(os.path.join(out_dir, "result.json"), "w", encoding="utf-8") as f:
        json.dump(result, f)


def multi_worker(data_dir, model_dir, out_json):
    from grdnet_tf.training import train_lib

    import numpy as np

    task = json.loads(os.environ["TF_CONFIG"])["task"]
    # best_metric total_loss: the best-checkpoint decision then depends on all three networks.
    summary = train_lib.train(make_config(epochs=1, steps_per_epoch=2, batch_size=2,
                                          strategy="multi_worker", best_metric="total_loss"),
                              data_dir, model_dir)
    model = summary["model"]
    with open(out_json, "w", encoding="utf-8") as f:
        json.dump({"task": task, "steps": summary["steps"], "epochs": summary["epochs"],
                   "last_train_logs": summary["last_train_logs"],
                   "threshold": summary["threshold"],
                   "best_val_loss": summary["best_val_loss"],
                   "trainable": {v.path: float(np.abs(v.numpy()).sum())
                                 for v in model.trainable_weights},
                   "optimizer_iterations": [int(o.iterations.numpy()) for o in
                                            summary["model"].optimizers.values()]}, f)


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    {"mirrored": mirrored, "multi_worker": multi_worker}[mode](*args)
