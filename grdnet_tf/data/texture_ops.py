"""Photometric augmentation of a synthetic-anomaly texture, in TensorFlow ops.

DRAEM (Zavrtanik et al., 2021) applies 3 of 10 random photometric operations to every
anomaly texture before blending it in, so that a texture does not stand out by its colour or
brightness alone; this module is that idea in stateless TensorFlow ops (the operations and
ranges are listed in ``OPS``; docs/method.md §1). An image here is float32 ``[H, W, C]`` in
[0, 1] with a static shape; every random draw comes from a stateless seed ``[2]``.

``augment(texture, seed, num_ops)`` draws ``num_ops`` distinct operations (a random
permutation of the available ones) and applies them in that order. With one channel the
hue/saturation shift is not available (9 operations).
"""
import math

import tensorflow as tf

from grdnet_tf.data import geometry, perlin

_LEVELS = 255.0


def _u(seed, tag, low, high, shape=()):
    return perlin.uniform(shape, perlin.fold(seed, tag), low, high)


def gamma_contrast(x, seed):
    """x ** gamma, log(gamma) ~ U(log 1/2, log 2) per channel."""
    gamma = tf.exp(_u(seed, 0, math.log(0.5), math.log(2.0), [1, 1, x.shape[-1]]))
    return tf.pow(tf.maximum(x, 0.0), gamma)


def brightness(x, seed):
    """x * m + a, m ~ U(0.8, 1.2), a ~ U(-30, 30) grey levels."""
    return x * _u(seed, 0, 0.8, 1.2) + _u(seed, 1, -30.0, 30.0) / _LEVELS


def sharpness(x, seed):
    """Blend with a 3x3 smoothed copy (PIL's sharpness rule): factor ~ U(0, 2); 0 is the
    smoothed image, 1 the input, 2 twice the detail."""
    channels = x.shape[-1]
    kernel = tf.constant([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]]) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, channels, 1])
    padded = tf.pad(x[None], [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
    smooth = tf.nn.depthwise_conv2d(padded, kernel, [1, 1, 1, 1], "VALID")[0]
    return smooth + _u(seed, 0, 0.0, 2.0) * (x - smooth)


def hue_saturation(x, seed):
    """RGB only: hue shifted by U(-0.2, 0.2) of the colour circle, saturation by
    U(-0.2, 0.2)."""
    hsv = tf.image.rgb_to_hsv(tf.clip_by_value(x, 0.0, 1.0))
    hue = tf.math.floormod(hsv[..., 0] + _u(seed, 0, -0.2, 0.2), 1.0)
    saturation = tf.clip_by_value(hsv[..., 1] + _u(seed, 1, -0.2, 0.2), 0.0, 1.0)
    return tf.image.hsv_to_rgb(tf.stack([hue, saturation, hsv[..., 2]], axis=-1))


def solarize(x, seed):
    """Values at or above a threshold ~ U(32, 128) grey levels are inverted."""
    return tf.where(x >= _u(seed, 0, 32.0, 128.0) / _LEVELS, 1.0 - x, x)


def posterize(x, seed):
    """Keeps the top b bits of each grey level, b uniform in {2, ..., 6}."""
    bits = tf.random.stateless_uniform([], perlin.fold(seed, 0), minval=2, maxval=7,
                                       dtype=tf.int32, alg=perlin.ALG)
    step = tf.cast(tf.bitwise.left_shift(1, 8 - bits), tf.float32)
    return tf.floor(tf.round(x * _LEVELS) / step) * step / _LEVELS


def invert(x, seed):
    del seed
    return 1.0 - x


def autocontrast(x, seed):
    """Per channel, stretch [min, max] to [0, 1] (a constant channel is left as it is)."""
    del seed
    low = tf.reduce_min(x, axis=[0, 1], keepdims=True)
    high = tf.reduce_max(x, axis=[0, 1], keepdims=True)
    span = high - low
    return tf.where(span > 0, (x - low) / tf.maximum(span, 1e-6), x)


def equalize(x, seed):
    """Per-channel histogram equalisation on 256 grey levels (the cumulative histogram,
    rescaled so the lowest occupied level maps to 0 and the highest to 1)."""
    del seed
    levels = tf.cast(tf.round(tf.clip_by_value(x, 0.0, 1.0) * _LEVELS), tf.int32)
    count = float(x.shape[0] * x.shape[1])
    channels = []
    for c in range(x.shape[-1]):
        level = levels[..., c]
        cdf = tf.cumsum(tf.math.bincount(tf.reshape(level, [-1]), minlength=256,
                                         maxlength=256, dtype=tf.float32))
        first = tf.reduce_min(tf.where(cdf > 0, cdf, count))
        lut = tf.clip_by_value((cdf - first) / tf.maximum(count - first, 1.0), 0.0, 1.0)
        channels.append(tf.gather(lut, level))
    return tf.stack(channels, axis=-1)


def rotation(x, seed):
    """Rotation about the centre by U(-45, 45) degrees, REFLECT fill."""
    angle = _u(seed, 0, -math.pi / 4, math.pi / 4)
    return geometry.rotate(x, angle, "BILINEAR")


# The operations, in the order of their indices. hue_saturation needs 3 channels.
OPS = (gamma_contrast, brightness, sharpness, hue_saturation, solarize, posterize, invert,
       autocontrast, equalize, rotation)
OP_NAMES = tuple(op.__name__ for op in OPS)


def available_ops(channels):
    return tuple(op for op in OPS if channels == 3 or op is not hue_saturation)


def augment(texture, seed, num_ops):
    """``num_ops`` distinct random operations of :func:`available_ops`, applied in a random
    order, the result clipped to [0, 1]; ``num_ops = 0`` returns ``texture`` unchanged."""
    if num_ops <= 0:
        return texture
    ops = available_ops(texture.shape[-1])
    order = tf.argsort(perlin.uniform([len(ops)], perlin.fold(seed, 0)))
    x = texture
    for i in range(min(num_ops, len(ops))):
        op_seed = perlin.fold(seed, i + 1)
        x = tf.switch_case(order[i], [lambda op=op: op(x, op_seed) for op in ops])
        x = tf.ensure_shape(tf.clip_by_value(x, 0.0, 1.0), texture.shape)
    return x
