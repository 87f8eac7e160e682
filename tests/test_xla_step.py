"""Issue 15 item 4 as far as a CPU checks it: the whole GRDNet training step (three
optimizers) compiles under XLA (jit_compile=True) and computes what the plain graph does."""
import keras
import numpy as np
import tensorflow as tf

from dist_worker import fixed_batch, make_config
from grdnet_tf.models import build_grdnet


def _model():
    keras.utils.set_random_seed(4)
    return build_grdnet(make_config(), compile=True)


def test_train_step_compiles_under_xla_and_matches_the_graph():
    plain, compiled = _model(), _model()
    compiled.set_weights(plain.get_weights())
    plain_step = tf.function(plain.train_step)
    xla_step = compiled.replica_train_step(jit_compile=True)  # one replica: the whole step
    batch = fixed_batch(seed=1)
    # The XLA function must compile as a whole: experimental_get_compiler_ir fails on any
    # op without an XLA kernel (no silent fallback with jit_compile=True).
    hlo = xla_step.experimental_get_compiler_ir(batch)(stage="hlo")
    assert "convolution" in hlo
    for step in range(2):  # the second step runs on the weights the first one updated
        batch = fixed_batch(seed=1 + step)
        plain_logs, xla_logs = plain_step(batch), xla_step(batch)
        for name, value in plain_logs.items():
            np.testing.assert_allclose(float(xla_logs[name]), float(value), rtol=1e-3,
                                       err_msg=f"{step} {name}")
    # Weights are not compared one by one: Adam's first steps move a weight with a
    # vanishing gradient (a conv bias before batch norm) by +-lr whatever its rounding.
    assert [int(o.iterations) for o in compiled.optimizers.values()] == [2, 2, 2]


def test_mixed_float16_step_with_loss_scaling_compiles_under_xla(mixed_float16):
    keras.utils.set_random_seed(4)
    model = build_grdnet(make_config(), compile=True, precision="mixed_float16")
    for optimizer in model.optimizers.values():
        optimizer.dynamic_scale.assign(256.0)
    xla_step = tf.function(model.train_step, jit_compile=True)
    batch = fixed_batch(seed=1)
    assert "convolution" in xla_step.experimental_get_compiler_ir(batch)(stage="hlo")
    logs = xla_step(batch)
    assert all(np.isfinite(float(v)) for v in logs.values()), logs
    assert [int(o.iterations) for o in model.optimizers.values()] == [1, 1, 1]
