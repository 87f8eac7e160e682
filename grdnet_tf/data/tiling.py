"""Patches at a working scale: the geometry shared by patch training and tiled inference.

With ``data.patch_scale = s > 0`` an image of native size (h, w) is resized (with
`preprocess.model_input`, like every model input) to its *working size*

    (round(h * f), round(w * f)),  f = max(s, H / h, W / w)

(f is raised only when the image would be smaller than one patch), and the networks see
``data.image_size = (H, W)`` patches of it: random or grid crops in training, a grid of
overlapping tiles at inference whose maps are averaged where they overlap. Both sides cut
patches from the same working-size image, so a tile's model input equals the training crop
of the same region bit for bit (tests/test_tiling.py).

Grid offsets along an axis of length L with patch T and stride S are 0, S, 2S, ... and a
last one flush with the border (L - T), so every pixel is covered; L <= T gives [0].
All functions are TensorFlow ops on dynamic shapes (they run inside a SavedModel).
"""
import tensorflow as tf


def patch_mode(config):
    """True when the networks see patches at a working scale (data.patch_scale > 0)."""
    return float(config.data.patch_scale) > 0


def patch_stride(config):
    """The grid stride of patch training and tiled inference (default: half a patch)."""
    return int(config.data.patch_stride) or max(1, min(config.data.image_size) // 2)


def working_size(height, width, scale, patch_size):
    """(height, width) int32 of the working-scale image (see module docstring); Python ints
    when height and width are (a fixed-size edge export: every resize weight a constant)."""
    if isinstance(height, int) and isinstance(width, int):
        factor = max(float(scale), float(patch_size[0]) / height, float(patch_size[1]) / width)
        # round(): half to even, as tf.round
        return (max(int(round(height * factor)), int(patch_size[0])),
                max(int(round(width * factor)), int(patch_size[1])))
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    factor = tf.maximum(tf.cast(scale, tf.float64),
                        tf.maximum(float(patch_size[0]) / h, float(patch_size[1]) / w))
    out_h = tf.maximum(tf.cast(tf.round(h * factor), tf.int32), int(patch_size[0]))
    out_w = tf.maximum(tf.cast(tf.round(w * factor), tf.int32), int(patch_size[1]))
    return out_h, out_w


def grid_offsets(length, patch, stride):
    """Start offsets [K] int32 of the patches along one axis (the last flush)."""
    length = tf.cast(length, tf.int32)
    last = tf.maximum(length - patch, 0)
    regular = tf.range(0, last, stride, dtype=tf.int32)
    return tf.concat([regular, last[None]], axis=0)


def grid(height, width, patch_size, stride):
    """Offsets [K, 2] int32 (y, x) of every grid patch of a (height, width) image."""
    ys = grid_offsets(height, int(patch_size[0]), int(stride))
    xs = grid_offsets(width, int(patch_size[1]), int(stride))
    yy, xx = tf.meshgrid(ys, xs, indexing="ij")
    return tf.stack([tf.reshape(yy, [-1]), tf.reshape(xx, [-1])], axis=1)


def crop(image, offset, patch_size):
    """The [H, W, C] patch of `image` [h', w', C] at `offset` (y, x)."""
    patch = tf.slice(image, tf.stack([offset[0], offset[1], 0]),
                     tf.stack([int(patch_size[0]), int(patch_size[1]), tf.shape(image)[2]]))
    return tf.ensure_shape(patch, [int(patch_size[0]), int(patch_size[1]), image.shape[-1]])


def _pixel_indices(offsets, patch_size):
    """[K, H, W, 2] (y, x) image coordinates of every pixel of every patch."""
    rows = tf.range(int(patch_size[0]), dtype=tf.int32)
    cols = tf.range(int(patch_size[1]), dtype=tf.int32)
    ys = offsets[:, 0, None, None] + rows[None, :, None]
    xs = offsets[:, 1, None, None] + cols[None, None, :]
    ys, xs = tf.broadcast_to(ys, tf.shape(ys + xs)), tf.broadcast_to(xs, tf.shape(ys + xs))
    return tf.stack([ys, xs], axis=-1)


def extract(image, offsets, patch_size):
    """Patches [K, H, W, C] of `image` [h', w', C] at `offsets` [K, 2] (each = `crop`)."""
    return tf.gather_nd(image, _pixel_indices(offsets, patch_size))


def stitch(maps, offsets, size):
    """Averages patch maps [K, H, W, ...] placed at `offsets` [K, 2] into one map
    [size[0], size[1], ...] (pixels no patch covers are 0)."""
    patch_size = (maps.shape[1], maps.shape[2])
    indices = _pixel_indices(offsets, patch_size)
    shape = tf.stack([tf.cast(size[0], tf.int32), tf.cast(size[1], tf.int32)])
    # tensor_scatter_nd_add, not scatter_nd: both add overlapping updates in TF, but tf2onnx
    # turns only this one into an adding ONNX ScatterND (scatter_nd's overwrites).
    total = tf.tensor_scatter_nd_add(
        tf.zeros(tf.concat([shape, tf.shape(maps)[3:]], 0), maps.dtype), indices, maps)
    count = tf.tensor_scatter_nd_add(tf.zeros(shape, maps.dtype), indices,
                                     tf.ones(tf.shape(maps)[:3], maps.dtype))
    count = tf.reshape(count, tf.concat([shape, tf.ones_like(tf.shape(maps)[3:])], 0))
    return total / tf.maximum(count, 1.0)
