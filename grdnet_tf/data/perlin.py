"""2-D Perlin noise in TensorFlow ops with stateless random numbers.

Works eagerly, inside ``tf.function`` and inside ``tf.data`` (the grid size may be a tensor).
All randomness comes from ``tf.random.stateless_*``: a seed gives the same noise on every
run. The RNG algorithm is "auto_select" (Philox on CPU and GPU; a tenth of the graph ops of
an explicit "philox", which matters for the tracing time of the ``tf.data`` function);
``tf.data`` functions always run on the host CPU, so the training stream is the same on
every machine.
"""
import math

import tensorflow as tf

ALG = "auto_select"

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


def perlin_noise(height, width, cells_y, cells_x, seed, batch=None):
    """Perlin noise ``float32 [height, width]`` (or ``[batch, height, width]``), about [-1, 1].

    A grid of ``cells_y x cells_x`` cells covers the image; random unit gradients sit on the
    ``(cells_y + 1) x (cells_x + 1)`` lattice points; pixel centres are interpolated with the
    quintic fade ``6t^5 - 15t^4 + 10t^3``. The result is multiplied by sqrt(2) (the classic
    2-D normalisation), so a threshold of 0.5 keeps blobs of moderate area.

    Args:
      height, width: python ints, output size.
      cells_y, cells_x: int32 scalars (python or tensors) >= 1, grid cells per axis.
      seed: stateless seed, int ``[2]``.
      batch: None for one field, or the number of independent fields on the same grid.
    """
    cells_y = tf.cast(cells_y, tf.int32)
    cells_x = tf.cast(cells_x, tf.int32)
    n = 1 if batch is None else int(batch)
    angles = uniform(tf.stack([n, cells_y + 1, cells_x + 1]), fold(seed, _GRADIENTS),
                     maxval=2.0 * math.pi)
    gradients = tf.stack([tf.cos(angles), tf.sin(angles)], axis=-1)  # [n, gy, gx, 2]

    def coords(size, cells):
        pos = (tf.range(size, dtype=tf.float32) + 0.5) * tf.cast(cells, tf.float32) / size
        cell = tf.minimum(tf.cast(tf.floor(pos), tf.int32), cells - 1)
        return tf.stack([cell, cell + 1]), pos - tf.cast(cell, tf.float32)

    rows, fy = coords(height, cells_y)  # [2, H], [H]
    cols, fx = coords(width, cells_x)
    corners = tf.gather(tf.gather(gradients, rows, axis=1), cols, axis=3)  # [n,2,H,2,W,2]
    offsets = tf.constant([[0.0], [1.0]])
    dy, dx = fy[None, :] - offsets, fx[None, :] - offsets  # [2, H], [2, W]
    dots = (corners[..., 0] * dx[None, None, None, :, :]
            + corners[..., 1] * dy[None, :, :, None, None])  # [n, 2(y), H, 2(x), W]
    ux, uy = _fade(fx), _fade(fy)[:, None]
    top = dots[:, 0, :, 0] + ux * (dots[:, 0, :, 1] - dots[:, 0, :, 0])
    bottom = dots[:, 1, :, 0] + ux * (dots[:, 1, :, 1] - dots[:, 1, :, 0])
    noise = math.sqrt(2.0) * (top + uy * (bottom - top))
    return noise[0] if batch is None else noise


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


def random_perlin_noise(height, width, seed, min_log2, max_log2, batch=None):
    """Perlin noise ``[height, width]`` (or ``[batch, height, width]``, one shared scale) at
    a random scale 2**k per axis (see random_scales)."""
    cells_y, cells_x = random_scales(height, width, seed, min_log2, max_log2)
    return perlin_noise(height, width, cells_y, cells_x, seed, batch)
