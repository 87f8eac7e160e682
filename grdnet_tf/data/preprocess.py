"""The one way an image becomes a model input, used by training, calibration, evaluation,
prediction and every export (docs/method.md §5: "one resize function").

    model_input(images, image_size, channels) -> float32 [B, H, W, channels] in [0, 1]

1. **Channels** (`to_channels`): RGB -> gray with OpenCV's integer weights
   ``(9798 R + 19235 G + 3735 B + 2**14) >> 15`` on uint8 inputs (bit-exact with
   ``cv2.cvtColor(..., COLOR_RGB2GRAY)``, which the training cache uses when it reads a colour
   file for a grayscale model); gray -> RGB replicates.
2. **Resize** (`resize`): separable, one weight matrix per axis, so the graph is two batched
   matmuls that ONNX and LiteRT convert. An axis that shrinks uses box (area) weights: output
   pixel i averages the source interval [i s, (i + 1) s), s = in / out, weighting each source
   pixel by its overlap, which is OpenCV's ``INTER_AREA``. An axis that grows uses linear
   weights at half-pixel centres with clamped borders (``INTER_LINEAR``). Equal sizes are the
   identity.
3. **Quantisation**: the result is rounded to the 1/255 grid (half to even). The training
   cache stores uint8, so rounding here makes an image at inference equal, bit for bit, to
   the same image in the training cache.

Masks (ROIs, ground truth) go through `model_mask`: nonzero = inside, nearest neighbour at
half-pixel centres (OpenCV's ``INTER_NEAREST_EXACT``), values in {0, 1}.

Everything is TensorFlow ops on dynamic shapes, so it runs inside a SavedModel signature for
images of any size.
"""
import numpy as np
import tensorflow as tf

# Grey level -> [0, 1] by multiplying with one float32 constant. A division by 255 is not
# safe: TensorFlow's graph optimiser may turn it into this multiplication in one graph and
# not in another (eager code), which differs in the last bit.
UNIT = np.float32(1.0 / 255.0)

# cv2.cvtColor(COLOR_RGB2GRAY) on uint8 (OpenCV 5): fixed-point weights, 15 fractional bits.
_GRAY_WEIGHTS_FIXED = (9798, 19235, 3735)
_GRAY_SHIFT = 15
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def to_unit(levels):
    """uint8 (or float) grey levels 0..255 -> float32 in [0, 1], the same in every graph."""
    return tf.cast(levels, tf.float32) * UNIT


def to_channels(images, channels):
    """uint8 or float [B, h, w, 1|3] -> the same dtype with `channels` (1 or 3) channels."""
    in_channels = images.shape[-1]
    if in_channels not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {in_channels}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if in_channels == channels:
        return images
    if channels == 3:
        return tf.image.grayscale_to_rgb(images)
    if images.dtype == tf.uint8:
        rgb = tf.cast(images, tf.int32)
        weights = tf.constant(_GRAY_WEIGHTS_FIXED, tf.int32)
        gray = tf.reduce_sum(rgb * weights, axis=-1, keepdims=True) + (1 << (_GRAY_SHIFT - 1))
        return tf.cast(tf.bitwise.right_shift(gray, _GRAY_SHIFT), tf.uint8)
    weights = tf.constant(_GRAY_WEIGHTS, images.dtype)
    return tf.reduce_sum(images * weights, axis=-1, keepdims=True)


def axis_weights(in_length, out_length):
    """[out_length, in_length] float32 resampling matrix of one axis (rows sum to 1).

    With both lengths Python ints (static shapes) the matrix is computed eagerly (the same
    ops) and enters a traced graph as one constant: the LiteRT converter cannot fold the
    float64 ops of a `tf.cond` branch, so a fixed-size edge export needs the constant.
    """
    if isinstance(in_length, int) and isinstance(out_length, int):
        with tf.init_scope():
            weights = _axis_weights(in_length, out_length).numpy()
        return tf.constant(weights)
    return _axis_weights(in_length, out_length)


def _axis_weights(in_length, out_length):
    in_length = tf.cast(in_length, tf.int32)
    out_length = tf.cast(out_length, tf.int32)
    n_in = tf.cast(in_length, tf.float64)
    n_out = tf.cast(out_length, tf.float64)
    scale = n_in / n_out
    out_index = tf.cast(tf.range(out_length), tf.float64)[:, None]
    in_index = tf.cast(tf.range(in_length), tf.float64)[None, :]

    def area():
        start, end = out_index * scale, (out_index + 1.0) * scale
        overlap = tf.minimum(end, in_index + 1.0) - tf.maximum(start, in_index)
        return tf.maximum(overlap, 0.0) / scale

    def linear():
        source = tf.clip_by_value((out_index + 0.5) * scale - 0.5, 0.0, n_in - 1.0)
        lower = tf.floor(source)
        frac = source - lower
        upper = tf.minimum(lower + 1.0, n_in - 1.0)
        return (tf.cast(tf.equal(in_index, lower), tf.float64) * (1.0 - frac)
                + tf.cast(tf.equal(in_index, upper), tf.float64) * frac)

    weights = tf.cond(out_length > in_length, linear, area)
    return tf.cast(weights, tf.float32)


def resize(images, size):
    """float32 [B, h, w, C] -> [B, H, W, C] with `axis_weights` per axis (no rounding).

    Two plain 2-D matmuls (a broadcasting batched matmul segfaults in TF 2.21's oneDNN
    kernels on some shapes; see docs/tf-notes.md).
    """
    images = tf.convert_to_tensor(images, tf.float32)
    shape = tf.shape(images)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    rows = axis_weights(_static(images.shape[1], height), size[0])         # [H, h]
    cols = axis_weights(_static(images.shape[2], width), size[1])          # [W, w]
    out_h, out_w = tf.shape(rows)[0], tf.shape(cols)[0]
    x = tf.reshape(tf.transpose(images, [1, 0, 2, 3]), [height, -1])       # [h, B w C]
    x = tf.reshape(tf.matmul(rows, x), [out_h, batch, width, channels])    # [H, B, w, C]
    x = tf.reshape(tf.transpose(x, [1, 0, 3, 2]), [-1, width])             # [B H C, w]
    x = tf.reshape(tf.matmul(x, cols, transpose_b=True),
                   [batch, out_h, channels, out_w])                        # [B, H, C, W]
    out = tf.transpose(x, [0, 1, 3, 2])
    if isinstance(size[0], int) and isinstance(size[1], int):
        out = tf.ensure_shape(out, [None, size[0], size[1], images.shape[-1]])
    return out


def _static(dim, dynamic):
    """The static length `dim` when known, else the `dynamic` tensor."""
    return dynamic if dim is None else int(dim)


def model_input(images, image_size, channels):
    """Any-size uint8 (or float in [0, 1]) images [B, h, w, 1|3] -> float32
    [B, H, W, channels] on the 1/255 grid: what the networks see, everywhere.

    The resize runs on grey levels 0..255, where the area weights of power-of-two factors
    and every partial sum are exact in float32, so a mean that ends in .5 (frequent at 2x)
    is exactly .5 whatever order a kernel sums in and rounds the same way in eager code
    (the training cache) and in an exported graph.
    """
    images = tf.convert_to_tensor(images)
    images = to_channels(images, channels)
    if images.dtype == tf.uint8:
        levels = tf.cast(images, tf.float32)
    else:
        levels = tf.cast(images, tf.float32) * 255.0
    levels = resize(levels, tuple(s if tf.is_tensor(s) else int(s) for s in image_size))
    return to_unit(tf.round(tf.clip_by_value(levels, 0.0, 255.0)))


def model_input_uint8(images, image_size, channels):
    """`model_input` as uint8 [B, H, W, channels] (what the training cache stores)."""
    levels = tf.round(model_input(images, image_size, channels) * 255.0)
    return tf.cast(levels, tf.uint8)


def model_mask(mask, size):
    """Mask [B, h, w] or [B, h, w, 1] (any dtype, nonzero = inside) -> float32 [B, H, W]
    in {0, 1}: nearest neighbour at half-pixel centres."""
    mask = tf.convert_to_tensor(mask)
    if mask.shape.rank == 4:
        mask = mask[..., 0]
    inside = tf.cast(tf.cast(mask, tf.float32) > 0, tf.float32)
    shape = tf.shape(inside)
    rows = _nearest_index(shape[1], size[0])
    cols = _nearest_index(shape[2], size[1])
    return tf.gather(tf.gather(inside, rows, axis=1), cols, axis=2)


def _nearest_index(in_length, out_length):
    """Source index of each output pixel: floor((i + 0.5) * in / out), clamped."""
    scale = tf.cast(in_length, tf.float64) / tf.cast(out_length, tf.float64)
    index = tf.floor((tf.cast(tf.range(out_length), tf.float64) + 0.5) * scale)
    return tf.minimum(tf.cast(index, tf.int32), tf.cast(in_length, tf.int32) - 1)
