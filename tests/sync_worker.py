"""Subprocess side of tests/test_sync_bn.py: training steps under several replicas against
one device on the same global batches (logical CPUs and a worker cluster must be configured
before TensorFlow initialises, so each scenario runs in a fresh process).

  python tests/sync_worker.py mirrored OUT_DIR [SYNC [PRECISION]]
      two logical CPUs, MirroredStrategy(["/cpu:0", "/cpu:1"]); PRECISION=mixed_float16
      wraps each SGD in a LossScaleOptimizer (at a fixed scale of 256).
  python tests/sync_worker.py multi_worker OUT_DIR [SYNC]
      MultiWorkerMirroredStrategy, one replica per process (TF_CONFIG set by the caller).

Both build the batch-norm tiny model twice from the same seed, once on the default strategy
and once under the distributed one (train.sync_batch_norm=SYNC, default 1), run STEPS
`train_step`s with SGD on the same global batches (each replica gets its slice), and write
OUT_DIR/result.npz: every variable of both models (`single/<path>`, `replicated/<path>`; a
mirrored variable's copy on every replica as `replicated/<path>#<replica>`), the trainable
weights before the steps (`before/<path>`) and the step logs
of both (`logs/<single|replicated>/<step>/<name>`).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
for _path in (os.path.dirname(HERE), HERE):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from dist_worker import BATCH, SGD_LEARNING_RATE, fixed_batch, make_config  # noqa: E402

STEPS = 3


def _strategy(mode):
    import tensorflow as tf
    if mode == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    return tf.distribute.MultiWorkerMirroredStrategy()


def run(mode, out_dir, sync="1", precision="float32"):
    strategy = _strategy(mode)
    import keras
    import numpy as np
    import tensorflow as tf

    from grdnet_tf.models import build_grdnet
    from grdnet_tf.models.grdnet import set_precision

    set_precision(precision)

    def sgd():
        optimizer = keras.optimizers.SGD(SGD_LEARNING_RATE)
        if precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, dynamic_growth_steps=100)
        return optimizer

    config = make_config()
    config.model.norm = "batch"
    config.train.sync_batch_norm = bool(int(sync))

    def build(scope_strategy):
        with scope_strategy.scope():
            keras.utils.set_random_seed(0)
            model = build_grdnet(config, compile=True, optimizers=[sgd() for _ in range(3)])
            for optimizer in model.optimizers.values():
                if precision == "mixed_float16":
                    optimizer.dynamic_scale.assign(256.0)
            return model

    single = build(tf.distribute.get_strategy())
    replicated = build(strategy)
    replicated.set_weights(single.get_weights())
    replicas = strategy.num_replicas_in_sync
    share = BATCH // replicas

    @tf.function
    def distributed_step(batch):
        def slice_of(context):
            start = context.replica_id_in_sync_group * share
            return {k: v[start:start + share] for k, v in batch.items()}
        per_replica = strategy.run(
            replicated.train_step,
            args=(strategy.experimental_distribute_values_from_function(slice_of),))
        return {k: strategy.reduce("MEAN", v, axis=None) for k, v in per_replica.items()}

    single_step = tf.function(single.train_step)
    arrays = {f"before/{v.path}": v.numpy() for v in single.trainable_variables}
    for step in range(STEPS):
        batch = fixed_batch(seed=step)
        for name, logs in (("single", single_step(batch)),
                           ("replicated", distributed_step(batch))):
            for key, value in logs.items():
                arrays[f"logs/{name}/{step}/{key}"] = np.asarray(value)
    for name, model in (("single", single), ("replicated", replicated)):
        for variable in model.variables:
            arrays[f"{name}/{variable.path}"] = variable.numpy()
            if name == "replicated":
                for i, copy in enumerate(strategy.experimental_local_results(variable.value)):
                    arrays[f"{name}/{variable.path}#{i}"] = copy.numpy()
    try:  # XLA cannot compile a step holding all-reduces: refused before any data is read
        from grdnet_tf.training import train_lib
        task = getattr(strategy.cluster_resolver, "task_id", 0) or 0
        empty = os.path.join(out_dir, f"no_data{task}")
        os.makedirs(os.path.join(empty, "train", "good"), exist_ok=True)  # a layout, no images
        train_lib.train(make_config(jit_compile=True), empty,
                        os.path.join(out_dir, "no_run"), strategy=strategy)
    except ValueError as e:
        arrays["jit_compile_error"] = np.array(str(e))
    task = getattr(strategy.cluster_resolver, "task_id", 0) or 0
    np.savez(os.path.join(out_dir, f"result{task}.npz"), **arrays)


if __name__ == "__main__":
    run(*sys.argv[1:])
