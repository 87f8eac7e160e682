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
3. **Quantisation**: the result is rounded to the 1/255 grid. The training cache stores
   uint8, so rounding here makes an image at inference equal, bit for bit, to the same image
   in the training cache.

Masks (ROIs, ground truth) go through `model_mask`: nonzero = inside, nearest neighbour at
half-pixel centres (OpenCV's ``INTER_NEAREST_EXACT``), values in {0, 1}.

Everything is TensorFlow ops on dynamic shapes, so it runs inside a SavedModel signature for
images of any size.
"""
import tensorflow as tf

# cv2.cvtColor(COLOR_RGB2GRAY) on uint8 (OpenCV 5): fixed-point weights, 15 fractional bits.
_GRAY_WEIGHTS_FIXED = (9798, 19235, 3735)
_GRAY_SHIFT = 15
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)


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
    """[out_length, in_length] float32 resampling matrix of one axis (rows sum to 1)."""
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
    """float32 [B, h, w, C] -> [B, H, W, C] with `axis_weights` per axis (no rounding)."""
    images = tf.convert_to_tensor(images, tf.float32)
    shape = tf.shape(images)
    height, width = size
    rows = axis_weights(shape[1], height)                      # [H, h]
    cols = axis_weights(shape[2], width)                       # [W, w]
    x = tf.transpose(images, [0, 3, 1, 2])                     # [B, C, h, w]
    x = tf.matmul(tf.matmul(rows, x), cols, transpose_b=True)  # [B, C, H, W]
    return tf.transpose(x, [0, 2, 3, 1])


def quantize(images):
    """Rounds float images in [0, 1] to the uint8 grid (k / 255), half to even."""
    return tf.round(tf.clip_by_value(images, 0.0, 1.0) * 255.0) / 255.0


def model_input(images, image_size, channels):
    """Any-size uint8 (or float in [0, 1]) images [B, h, w, 1|3] -> float32
    [B, H, W, channels] on the 1/255 grid: what the networks see, everywhere."""
    images = tf.convert_to_tensor(images)
    images = to_channels(images, channels)
    if images.dtype == tf.uint8:
        images = tf.cast(images, tf.float32) / 255.0
    else:
        images = tf.cast(images, tf.float32)
    return quantize(resize(images, tuple(int(s) for s in image_size)))


def model_input_uint8(images, image_size, channels):
    """`model_input` as uint8 [B, H, W, channels] (what the training cache stores)."""
    return tf.cast(tf.round(model_input(images, image_size, channels) * 255.0), tf.uint8)


def model_mask(mask, size):
    """Mask [B, h, w] or [B, h, w, 1] (any dtype, nonzero = inside) -> float32 [B, H, W]
    in {0, 1}: nearest neighbour at half-pixel centres."""
    mask = tf.convert_to_tensor(mask)
    if mask.shape.rank == 4:
        mask = mask[..., 0]
    inside = tf.cast(tf.cast(mask, tf.float32) > 0, tf.float32)
    shape = tf.shape(inside)
    height, width = size
    rows = _nearest_index(shape[1], height)
    cols = _nearest_index(shape[2], width)
    return tf.gather(tf.gather(inside, rows, axis=1), cols, axis=2)


def _nearest_index(in_length, out_length):
    """Source index of each output pixel: floor((i + 0.5) * in / out), clamped."""
    scale = tf.cast(in_length, tf.float64) / tf.cast(out_length, tf.float64)
    index = tf.floor((tf.cast(tf.range(out_length), tf.float64) + 0.5) * scale)
    return tf.minimum(tf.cast(index, tf.int32), tf.cast(in_length, tf.int32) - 1)
