"""Photometric texture operations (grdnet_tf.data.texture_ops) and the built-in textures."""
import numpy as np
import pytest
import tensorflow as tf

from grdnet_tf.data import perlin, texture_ops, textures
from helpers_images import random_images

SIZE = 24
RGB = tf.constant(random_images((SIZE, SIZE, 3), 3))


def seed(i):
    return perlin.fold(tf.constant([1, 2], tf.int64), i)


@pytest.mark.parametrize("op", texture_ops.OPS, ids=texture_ops.OP_NAMES)
def test_each_op_keeps_shape_range_and_is_deterministic(op):
    a = tf.clip_by_value(op(RGB, seed(0)), 0.0, 1.0).numpy()
    b = tf.function(lambda: tf.clip_by_value(op(RGB, seed(0)), 0.0, 1.0))().numpy()
    assert a.shape == RGB.shape
    np.testing.assert_allclose(a, b, atol=1e-6)
    changed = [not np.allclose(op(RGB, seed(i)).numpy(), RGB.numpy(), atol=1e-3)
               for i in range(4)]
    assert all(changed), op.__name__


def test_op_semantics_pinned():
    x = RGB.numpy()
    np.testing.assert_array_equal(texture_ops.invert(RGB, seed(0)).numpy(), 1.0 - x)
    stretched = texture_ops.autocontrast(RGB * 0.5 + 0.2, seed(0)).numpy()
    np.testing.assert_allclose(stretched.min(axis=(0, 1)), 0.0, atol=1e-6)
    np.testing.assert_allclose(stretched.max(axis=(0, 1)), 1.0, atol=1e-6)
    solar = texture_ops.solarize(RGB, seed(0)).numpy()
    assert np.all((solar == x) | np.isclose(solar, 1.0 - x))
    assert np.all(solar[x >= 128 / 255] == 1.0 - x[x >= 128 / 255])
    assert np.all(solar[x < 32 / 255] == x[x < 32 / 255])
    levels = np.round(texture_ops.posterize(RGB, seed(0)).numpy() * 255)
    assert len(np.unique(levels)) <= 64 and np.all(levels % 4 == 0)
    # Equalising a two-level image maps its levels to 0 and 1; a ramp stays a ramp.
    two = tf.constant(np.where(x > 0.5, 0.6, 0.3).astype(np.float32))
    np.testing.assert_array_equal(np.unique(texture_ops.equalize(two, seed(0)).numpy()),
                                  [0.0, 1.0])
    ramp = tf.constant(np.tile(np.linspace(0.1, 0.4, SIZE, dtype=np.float32)[None, :, None],
                               [SIZE, 1, 1]))
    eq = texture_ops.equalize(ramp, seed(0)).numpy()[0, :, 0]
    assert eq[0] == 0.0 and eq[-1] == 1.0 and np.all(np.diff(eq) > 0)
    # Constant images are fixed points of sharpness, rotation and equal-channel hue shifts.
    flat = tf.fill([SIZE, SIZE, 3], 0.4)
    for op in (texture_ops.sharpness, texture_ops.rotation, texture_ops.hue_saturation):
        np.testing.assert_allclose(op(flat, seed(1)).numpy(), 0.4, atol=1e-5)
    # Gamma keeps 0 and 1.
    ends = tf.constant(np.array([0.0, 1.0], np.float32).reshape(1, 2, 1) * np.ones((1, 1, 3),
                                                                                     np.float32))
    np.testing.assert_allclose(texture_ops.gamma_contrast(ends, seed(2)).numpy(), ends.numpy())


def test_augment():
    np.testing.assert_array_equal(texture_ops.augment(RGB, seed(0), 0).numpy(), RGB.numpy())
    outs = [texture_ops.augment(RGB, seed(i), 3).numpy() for i in range(6)]
    assert all(o.shape == RGB.shape and o.min() >= 0 and o.max() <= 1 for o in outs)
    assert len({o.tobytes() for o in outs}) == 6
    np.testing.assert_array_equal(outs[0], texture_ops.augment(RGB, seed(0), 3).numpy())
    gray = RGB[:, :, :1]
    assert len(texture_ops.available_ops(1)) == 9
    assert texture_ops.augment(gray, seed(0), 9).shape == gray.shape


def test_builtin_textures():
    bank = textures.builtin_textures((32, 48), 3, 6, seed=0)
    assert bank.shape == (6, 32, 48, 3) and bank.dtype == np.uint8
    np.testing.assert_array_equal(bank, textures.builtin_textures((32, 48), 3, 6, seed=0))
    assert len({b.tobytes() for b in bank}) == 6
    assert bank.std() > 20  # photographs, not flat fields
    gray = textures.builtin_textures((32, 32), 1, 2, seed=1)
    assert gray.shape == (2, 32, 32, 1)
