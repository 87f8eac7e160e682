"""2-D Perlin noise in TensorFlow ops with stateless random numbers.

Works eagerly, inside ``tf.function`` and inside ``tf.data`` (the grid size may be a tensor).
All randomness comes from ``tf.random.stateless_*`` with the Philox algorithm, so a seed
gives the same noise on every run and device.
"""
import math

import tensorflow as tf

ALG = "philox"  # fixed, not "auto_select": the same numbers on every device

# Sub-seed tags (folded into the caller's seed).
_GRADIENTS, _SCALE_Y, _SCALE_X = 1, 2, 3


def fold(seed, tag):
    """Derives an independent stateless seed ``[2]`` from ``seed`` and an integer tag."""
    return tf.random.experimental.stateless_fold_in(seed, tag, alg=ALG)


def uniform(shape, seed, minval=0.0, maxval=1.0, dtype=tf.float32):
    return tf.random.stateless_uniform(shape, seed, minval=minval, maxval=maxval, dtype=dtype,
                                       alg=ALG)


def _fade(t):
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(height, width, cells_y, cells_x, seed):
    """Perlin noise ``float32 [height, width]`` scaled to about [-1, 1].

    A grid of ``cells_y x cells_x`` cells covers the image; random unit gradients sit on the
    ``(cells_y + 1) x (cells_x + 1)`` lattice points; pixel centres are interpolated with the
    quintic fade ``6t^5 - 15t^4 + 10t^3``. The result is multiplied by sqrt(2) (the classic
    2-D normalisation), so a threshold of 0.5 keeps blobs of moderate area.

    Args:
      height, width: python ints, output size.
      cells_y, cells_x: int32 scalars (python or tensors) >= 1, grid cells per axis.
      seed: stateless seed, int ``[2]``.
    """
    cells_y = tf.cast(cells_y, tf.int32)
    cells_x = tf.cast(cells_x, tf.int32)
    angles = uniform(tf.stack([cells_y + 1, cells_x + 1]), fold(seed, _GRADIENTS),
                     maxval=2.0 * math.pi)
    grad_x, grad_y = tf.cos(angles), tf.sin(angles)

    def coords(size, cells):
        pos = (tf.range(size, dtype=tf.float32) + 0.5) * tf.cast(cells, tf.float32) / size
        cell = tf.minimum(tf.cast(tf.floor(pos), tf.int32), cells - 1)
        return cell, pos - tf.cast(cell, tf.float32)

    iy, fy = coords(height, cells_y)
    ix, fx = coords(width, cells_x)
    fy, fx = fy[:, None], fx[None, :]

    def corner(dy, dx):
        gx = tf.gather(tf.gather(grad_x, iy + dy), ix + dx, axis=1)
        gy = tf.gather(tf.gather(grad_y, iy + dy), ix + dx, axis=1)
        return gx * (fx - float(dx)) + gy * (fy - float(dy))

    ux, uy = _fade(fx), _fade(fy)
    top = corner(0, 0) + ux * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + ux * (corner(1, 1) - corner(1, 0))
    return math.sqrt(2.0) * (top + uy * (bottom - top))


def scale_range(size, min_log2, max_log2):
    """(lo, hi) exponents of 2**k grid cells, clamped so that 2**k never exceeds ``size``."""
    limit = int(math.floor(math.log2(size)))
    hi = min(int(max_log2), limit)
    lo = min(int(min_log2), hi)
    return lo, hi


def random_scales(height, width, seed, min_log2, max_log2):
    """Random grid cells ``(2**ky, 2**kx)``, k uniform in the clamped [min_log2, max_log2]."""
    cells = []
    for size, tag in ((height, _SCALE_Y), (width, _SCALE_X)):
        lo, hi = scale_range(size, min_log2, max_log2)
        k = tf.random.stateless_uniform([], fold(seed, tag), minval=lo, maxval=hi + 1,
                                        dtype=tf.int32, alg=ALG)
        cells.append(tf.bitwise.left_shift(1, k))
    return cells[0], cells[1]


def random_perlin_noise(height, width, seed, min_log2, max_log2):
    """Perlin noise ``[height, width]`` at a random scale 2**k per axis (see random_scales)."""
    cells_y, cells_x = random_scales(height, width, seed, min_log2, max_log2)
    return perlin_noise(height, width, cells_y, cells_x, seed)


def rotation_transform(angle, height, width):
    """The 8 projective-transform parameters of a rotation by ``angle`` (radians,
    counter-clockwise) about the image centre, mapping output to input coordinates."""
    cos, sin = tf.cos(angle), tf.sin(angle)
    h, w = float(height - 1), float(width - 1)
    x_offset = (w - (cos * w - sin * h)) / 2.0
    y_offset = (h - (sin * w + cos * h)) / 2.0
    zero = tf.zeros_like(cos)
    return tf.stack([cos, -sin, x_offset, sin, cos, y_offset, zero, zero])


def rotate(image, angle, interpolation="BILINEAR"):
    """Rotates ``[H, W, C]`` about its centre by ``angle`` radians, REFLECT fill.

    ``interpolation`` is "BILINEAR" (images) or "NEAREST" (masks: values stay binary).
    """
    height, width = image.shape[0], image.shape[1]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=rotation_transform(tf.cast(angle, tf.float32), height, width)[None],
        output_shape=tf.constant([height, width], tf.int32),
        fill_value=tf.constant(0.0, image.dtype),
        interpolation=interpolation,
        fill_mode="REFLECT")
    return out[0]

