"""Perlin noise and the anomaly mask (grdnet_tf.data.perlin, synthesis.anomaly_mask)."""

import numpy as np
import pytest
import tensorflow as tf

from grdnet_tf.config import base_config
from grdnet_tf.data import perlin, synthesis

SEED = tf.constant([1, 2], tf.int64)


def params(**overrides):
    c = base_config()
    c.synthesis.update(overrides)
    return synthesis.SynthesisParams.from_config(c)


def test_pinned_value():
    noise = perlin.perlin_noise(32, 32, 4, 4, SEED)
    assert noise.shape == (32, 32) and noise.dtype == tf.float32
    # Computed once with Philox (device independent) and pasted.
    assert float(tf.reduce_sum(noise)) == pytest.approx(-54.174103, abs=1e-4)


def test_range_smoothness_and_seeds():
    a = perlin.perlin_noise(64, 48, 8, 2, SEED).numpy()
    assert a.shape == (64, 48)
    assert np.abs(a).max() <= 1.0 + 1e-5 and np.abs(a).max() > 0.2
    # Smooth: neighbouring pixels differ much less than the range.
    assert np.abs(np.diff(a, axis=0)).max() < 0.5 and np.abs(np.diff(a, axis=1)).max() < 0.5
    np.testing.assert_array_equal(a, perlin.perlin_noise(64, 48, 8, 2, SEED).numpy())
    b = perlin.perlin_noise(64, 48, 8, 2, tf.constant([1, 3], tf.int64)).numpy()
    assert not np.array_equal(a, b)


def test_finest_grid_is_not_zero():
    # One cell per pixel: pixel centres are mid-cell, so the noise is not the lattice zeros.
    assert np.abs(perlin.perlin_noise(16, 16, 16, 16, SEED).numpy()).max() > 0.05


def test_scale_range_clamped_to_image():
    assert perlin.scale_range(256, 0, 6) == (0, 6)
    assert perlin.scale_range(32, 0, 6) == (0, 5)
    assert perlin.scale_range(4, 3, 6) == (2, 2)
    drawn_y, drawn_x = set(), set()
    for i in range(20):
        cy, cx = perlin.random_scales(32, 8, perlin.fold(SEED, i), 0, 6)
        drawn_y.add(int(cy))
        drawn_x.add(int(cx))
    # Each axis clamped to its own size (2**6 = 64 cells never drawn), every allowed power
    # of two reached in 20 draws with this seed.
    assert drawn_y == {1, 2, 4, 8, 16, 32}
    assert drawn_x == {1, 2, 4, 8}


def test_mask_binary_nonempty_in_all_modes():
    p = params()

    def mask(i):
        return synthesis.anomaly_mask(32, 32, perlin.fold(SEED, i), p)

    eager = mask(tf.constant(3, tf.int64)).numpy()
    graph = tf.function(mask)(tf.constant(3, tf.int64)).numpy()
    mapped = next(iter(tf.data.Dataset.from_tensors(tf.constant(3, tf.int64)).map(mask)))
    np.testing.assert_array_equal(eager, graph)
    np.testing.assert_array_equal(eager, mapped.numpy())
    assert eager.shape == (32, 32, 1)
    assert set(np.unique(eager)) <= {0.0, 1.0}
    areas = [float(tf.reduce_mean(m))
             for m in tf.data.Dataset.range(100).map(mask).as_numpy_iterator()]
    assert min(areas) > 0  # the rescaling fallback: never an empty mask
    assert 0.01 < np.mean(areas) < 0.25
    assert max(areas) < 0.8


def test_perlin_rotation_changes_mask():
    m0 = synthesis.anomaly_mask(32, 32, SEED, params(perlin_rotation_deg=0.0))
    m1 = synthesis.anomaly_mask(32, 32, SEED, params(perlin_rotation_deg=90.0))
    assert not np.array_equal(m0.numpy(), m1.numpy())
