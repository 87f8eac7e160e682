"""FusedBatchNormalization must be keras.layers.BatchNormalization, only faster; the
residual block's serialisation."""
import numpy as np
import pytest
import keras
import tensorflow as tf

from grdnet_tf.models.blocks import FusedBatchNormalization, PreActResidualBlock
from helpers_layers import run_layer_test


def _pair(channels=6):
    """A fused layer and a Keras layer with identical, non-trivial weights and statistics."""
    kwargs = dict(momentum=0.9, epsilon=1e-5)
    fused = FusedBatchNormalization(**kwargs)
    plain = keras.layers.BatchNormalization(**kwargs)
    for layer in (fused, plain):
        layer.build((None, 5, 7, channels))
    rng = np.random.default_rng(0)
    weights = [rng.uniform(0.5, 1.5, channels), rng.normal(size=channels),
               rng.normal(size=channels), rng.uniform(0.5, 2.0, channels)]
    fused.set_weights(weights)
    plain.set_weights(weights)
    return fused, plain


def _inputs(channels=6, seed=1):
    # Mean far from zero and unequal channel scales: where one- and two-pass variance differ.
    rng = np.random.default_rng(seed)
    x = rng.normal(3.0, 1.0, (4, 5, 7, channels)) * rng.uniform(0.1, 4.0, channels)
    return tf.constant(x, tf.float32)


@pytest.mark.parametrize("training", [True, False])
def test_forward_and_gradients_equal_keras(training):
    fused, plain = _pair()
    x = _inputs()
    upstream = tf.constant(np.random.default_rng(2).normal(size=x.shape), tf.float32)
    results = []
    for layer in (fused, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
            loss = tf.reduce_sum(y * upstream)
        results.append((y, tape.gradient(loss, [x, layer.gamma, layer.beta])))
    (y_fused, g_fused), (y_plain, g_plain) = results
    np.testing.assert_allclose(y_fused, y_plain, rtol=1e-4, atol=1e-4)
    for a, b, name in zip(g_fused, g_plain, ("input", "gamma", "beta")):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-3, err_msg=name)
    if training:  # normalised per channel over the batch: mean ~beta, std ~|gamma|
        np.testing.assert_allclose(tf.reduce_mean(y_fused, axis=(0, 1, 2)), fused.beta,
                                   atol=1e-4)


def test_moving_statistics_update_equals_keras():
    fused, plain = _pair()
    x = _inputs()
    for _ in range(3):
        fused(x, training=True)
        plain(x, training=True)
    np.testing.assert_allclose(fused.moving_mean, plain.moving_mean, rtol=1e-5)
    # Keras averages the biased batch variance; the kernel's is Bessel-corrected.
    np.testing.assert_allclose(fused.moving_variance, plain.moving_variance, rtol=1e-4)
    # Pinned: 3 updates with momentum 0.9 from the initial statistics.
    batch_mean = tf.reduce_mean(x, axis=(0, 1, 2))
    initial = _pair()[0].moving_mean
    np.testing.assert_allclose(fused.moving_mean,
                               0.729 * initial + 0.271 * batch_mean, rtol=1e-5)


def test_runs_one_fused_kernel_forward_and_backward():
    fused, _ = _pair()
    x = _inputs()

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fused(x, training=True)
            loss = tf.reduce_sum(tf.square(y))
        return tape.gradient(loss, x)

    op_types = {op.type for op in step.get_concrete_function(x).graph.get_operations()}
    assert "FusedBatchNormV3" in op_types and "FusedBatchNormGradV3" in op_types
    assert "Rsqrt" not in op_types  # not the tf.nn.batch_normalization formula


def test_falls_back_to_keras_for_float16_and_rank_2():
    layer = FusedBatchNormalization(dtype="mixed_float16")
    y = layer(tf.ones((2, 3, 3, 4), tf.float16) * 2.0, training=True)
    assert y.dtype == tf.float16
    np.testing.assert_allclose(tf.cast(y, tf.float32), 0.0, atol=1e-2)
    dense = FusedBatchNormalization()
    out = dense(tf.constant([[1.0, 2.0], [3.0, 6.0]]), training=True)
    np.testing.assert_allclose(out, [[-1.0, -1.0], [1.0, 1.0]], atol=1e-2)


def test_round_trips(tmp_path):
    layer, keys = run_layer_test(lambda: FusedBatchNormalization(momentum=0.9, epsilon=1e-5),
                                 _inputs(), tmp_path)
    assert isinstance(FusedBatchNormalization.from_config(layer.get_config()),
                      FusedBatchNormalization)
    assert len(keys) == 4  # gamma, beta and the two moving statistics


@pytest.mark.parametrize("make", [
    lambda: PreActResidualBlock(6),
    lambda: PreActResidualBlock(8, resample="down", norm="group", activation="leaky_relu"),
    lambda: PreActResidualBlock(4, resample="up", norm="instance", attention="cbam",
                                attention_reduction=2),
])
def test_residual_block_round_trips(tmp_path, make):
    run_layer_test(make, _inputs(seed=3)[:, :4, :6], tmp_path)
