"""Subprocess side of tests/test_sync_bn.py: training steps under several replicas against
one device on the same global batches (logical CPUs and a worker cluster must be configured
before TensorFlow initialises, so each scenario runs in a fresh process).

  python tests/sync_worker.py mirrored OUT_DIR [SYNCS [PRECISION]]
      two logical CPUs, MirroredStrategy(["/cpu:0", "/cpu:1"]); PRECISION=mixed_float16
      wraps each SGD in a LossScaleOptimizer (at a fixed scale of 256).
  python tests/sync_worker.py multi_worker OUT_DIR [SYNCS]
      MultiWorkerMirroredStrategy, one replica per process (TF_CONFIG set by the caller).

Both build the batch-norm tiny model from the same seed once on the default strategy and,
for each value SYNC of the comma-separated SYNCS (default "1"), once under the distributed
one (train.sync_batch_norm=SYNC[0]; a SYNC ending in "xla" also compiles each replica's
step under XLA, train.jit_compile); they run STEPS `train_step`s with SGD on the same global
batches (each replica gets its slice, `train_lib.distributed_train_step`) and write
OUT_DIR/result<task>_sync<SYNC>.npz per SYNC:
every variable of both models (`single/<path>`, `replicated/<path>`; a mirrored variable's
copy on every replica as `replicated/<path>#<replica>`), the trainable weights before the
steps (`before/<path>`) and after the first (`first/<single|replicated>/<path>`), the step
logs of both (`logs/<single|replicated>/<step>/<name>`)
and the message refusing train.jit_compile with synchronised batch norm under the strategy
(`jit_compile_error`).
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


def run(mode, out_dir, syncs="1", precision="float32"):
    strategy = _strategy(mode)
    import keras
    import numpy as np
    import tensorflow as tf

    from grdnet_tf.models import build_grdnet
    from grdnet_tf.models.grdnet import set_precision
    from grdnet_tf.training import train_lib

    set_precision(precision)

    def sgd():
        optimizer = keras.optimizers.SGD(SGD_LEARNING_RATE)
        if precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, dynamic_growth_steps=100)
        return optimizer

    def build(scope_strategy, sync):
        config = make_config()
        config.model.norm = "batch"
        config.train.sync_batch_norm = sync
        with scope_strategy.scope():
            keras.utils.set_random_seed(0)
            model = build_grdnet(config, compile=True, optimizers=[sgd() for _ in range(3)])
            for optimizer in model.optimizers.values():
                if precision == "mixed_float16":
                    optimizer.dynamic_scale.assign(256.0)
            return model

    # One device: train.sync_batch_norm changes nothing there, so one model serves as the
    # reference of every SYNC value.
    single = build(tf.distribute.get_strategy(), True)
    replicated = {}
    for sync in syncs.split(","):
        replicated[sync] = build(strategy, bool(int(sync[0])))
        replicated[sync].set_weights(single.get_weights())
    replicas = strategy.num_replicas_in_sync
    share = BATCH // replicas

    def distributed(batch):
        def slice_of(context):
            start = context.replica_id_in_sync_group * share
            return {k: v[start:start + share] for k, v in batch.items()}
        return strategy.experimental_distribute_values_from_function(slice_of)

    single_step = tf.function(single.train_step)
    steps = {sync: train_lib.distributed_train_step(model, strategy, sync.endswith("xla"))
             for sync, model in replicated.items()}
    before = {f"before/{v.path}": v.numpy() for v in single.trainable_variables}
    arrays = {sync: dict(before) for sync in replicated}
    for step in range(STEPS):
        batch = fixed_batch(seed=step)
        single_logs = single_step(batch)
        for sync, replicated_step in steps.items():
            for name, logs in (("single", single_logs),
                               ("replicated", replicated_step(distributed(batch)))):
                for key, value in logs.items():
                    arrays[sync][f"logs/{name}/{step}/{key}"] = np.asarray(value)
            if step == 0:  # one update from identical weights: no amplification yet
                for name, source in (("single", single), ("replicated", replicated[sync])):
                    for variable in source.trainable_variables:
                        arrays[sync][f"first/{name}/{variable.path}"] = variable.numpy()
    for sync, model in replicated.items():
        for name, source in (("single", single), ("replicated", model)):
            for variable in source.variables:
                arrays[sync][f"{name}/{variable.path}"] = variable.numpy()
                if name == "replicated":
                    for i, copy in enumerate(
                            strategy.experimental_local_results(variable.value)):
                        arrays[sync][f"{name}/{variable.path}#{i}"] = copy.numpy()
    task = getattr(strategy.cluster_resolver, "task_id", 0) or 0
    jit_compile_error = None
    try:  # XLA cannot compile sync BN's all-reduce on CPUs: refused before any data is read
        empty = os.path.join(out_dir, f"no_data{task}")
        os.makedirs(os.path.join(empty, "train", "good"), exist_ok=True)  # a layout, no images
        train_lib.train(make_config(jit_compile=True), empty,
                        os.path.join(out_dir, "no_run"), strategy=strategy)
    except ValueError as e:
        jit_compile_error = np.array(str(e))
    for sync, result in arrays.items():
        if jit_compile_error is not None:
            result["jit_compile_error"] = jit_compile_error
        np.savez(os.path.join(out_dir, f"result{task}_sync{sync}.npz"), **result)


if __name__ == "__main__":
    run(*sys.argv[1:])
