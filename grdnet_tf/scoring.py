"""The one scoring module: evaluation, prediction and the exported SavedModel all use it.

Pipeline (docs/method.md §5), all TensorFlow ops so it runs inside a SavedModel graph:

  images (uint8 or float, any size, 1 or 3 channels)
    -> `prepare_images`: channels converted, resized to the model size, float32 in [0, 1]
    -> GRDNet: X̂ = generator(X) (E1 + decoder), A = segmentator(concat(X, X̂))
    -> optional hard ROI masking of A
    -> `smooth`: average pooling kernel x kernel, stride 1, same padding
    -> image score = max of the smoothed map (at model resolution)
    -> maps and reconstructions resized back to the input resolution
    -> is_anomalous = score > threshold (calibrated on validation normals)
"""
import numpy as np
import tensorflow as tf

from grdnet_tf import keys


def prepare_images(images, image_size, channels):
    """Any-size uint8/float images [B, h, w, 1|3] -> float32 [B, H, W, channels] in [0, 1]."""
    if images.dtype == tf.uint8:
        images = tf.cast(images, tf.float32) / 255.0
    else:
        images = tf.cast(images, tf.float32)
    in_channels = images.shape[-1]
    if in_channels == 3 and channels == 1:
        images = tf.image.rgb_to_grayscale(images)
    elif in_channels == 1 and channels == 3:
        images = tf.image.grayscale_to_rgb(images)
    elif in_channels not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {in_channels}")
    images = tf.image.resize(images, image_size, method="bilinear", antialias=True)
    return tf.clip_by_value(images, 0.0, 1.0)


def prepare_roi(roi, image_size):
    """ROI [B, h, w] or [B, h, w, 1] (any dtype, nonzero = inside) -> float32 [B, H, W] {0,1}."""
    roi = tf.convert_to_tensor(roi)
    if roi.shape.rank == 3:
        roi = roi[..., tf.newaxis]
    roi = tf.cast(tf.cast(roi, tf.float32) > 0, tf.float32)
    roi = tf.image.resize(roi, image_size, method="nearest")
    return roi[..., 0]


def smooth(anomaly_map, kernel_size):
    """Average pooling, kernel_size x kernel_size, stride 1, same padding ([B, H, W])."""
    if kernel_size <= 1:
        return anomaly_map
    pooled = tf.nn.avg_pool2d(anomaly_map[..., tf.newaxis], ksize=kernel_size, strides=1,
                              padding="SAME")
    return pooled[..., 0]


def image_score(smoothed_map):
    """Image anomaly score: max of the smoothed map, [B, H, W] -> [B]."""
    return tf.reduce_max(smoothed_map, axis=[1, 2])


def score_model_inputs(model, images, kernel_size, roi=None):
    """Model-size float images [B, H, W, C] -> dict with model-resolution outputs.

    Returns RECONSTRUCTION [B, H, W, C], ANOMALY_MAP (smoothed) [B, H, W], ANOMALY_SCORE [B].
    `roi`: optional float [B, H, W] hard mask applied to the raw map before smoothing.
    """
    outputs = model(images, training=False)
    anomaly_map = outputs[keys.RAW_ANOMALY_MAP]
    if roi is not None:
        anomaly_map = anomaly_map * roi
    smoothed = smooth(anomaly_map, kernel_size)
    return {keys.RECONSTRUCTION: outputs[keys.RECONSTRUCTION], keys.ANOMALY_MAP: smoothed,
            keys.ANOMALY_SCORE: image_score(smoothed)}


def score_images(model, images, image_size, channels, kernel_size, threshold, roi=None):
    """Full scoring of raw images at any resolution; outputs at the input resolution.

    Args:
        model: a GRDNet (or anything with the same `call` contract).
        images: uint8 or float [B, h, w, 1|3].
        image_size: (H, W) of the model; channels: the model's channels.
        kernel_size: smoothing window; threshold: float (scores above it are anomalous).
        roi: optional [B, h, w] (or [B, h, w, 1]) mask at the input resolution.

    Returns dict: RECONSTRUCTION float32 [B, h, w, C] in [0, 1], ANOMALY_MAP float32
    [B, h, w] in [0, 1], ANOMALY_SCORE float32 [B], IS_ANOMALOUS bool [B].
    """
    images = tf.convert_to_tensor(images)
    input_size = tf.shape(images)[1:3]
    model_images = prepare_images(images, image_size, channels)
    model_roi = None if roi is None else prepare_roi(roi, image_size)
    out = score_model_inputs(model, model_images, kernel_size, roi=model_roi)
    anomaly_map = tf.image.resize(out[keys.ANOMALY_MAP][..., tf.newaxis], input_size,
                                  method="bilinear")[..., 0]
    reconstruction = tf.image.resize(out[keys.RECONSTRUCTION], input_size, method="bilinear")
    score = out[keys.ANOMALY_SCORE]
    return {
        keys.RECONSTRUCTION: tf.clip_by_value(reconstruction, 0.0, 1.0),
        keys.ANOMALY_MAP: tf.clip_by_value(anomaly_map, 0.0, 1.0),
        keys.ANOMALY_SCORE: score,
        keys.IS_ANOMALOUS: score > tf.cast(threshold, score.dtype),
    }


def calibrate_threshold(normal_scores, quantile):
    """Threshold = the `quantile` of validation-normal image scores (linear interpolation)."""
    scores = np.asarray(normal_scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("cannot calibrate a threshold without validation images")
    return float(np.quantile(scores, quantile))


def tile_offsets(length, tile, stride):
    """Start offsets covering [0, length) with windows of `tile` (the last one flush)."""
    if length <= tile:
        return [0]
    offsets = list(range(0, length - tile, stride))
    return offsets + [length - tile]


def score_tiled(model, image, image_size, channels, kernel_size, tile_size, tile_stride,
                roi=None):
    """Scores one high-resolution image by tiles; returns the smoothed map at native size.

    The image (uint8 or float [h, w, 1|3]) is cut into tile_size x tile_size windows every
    tile_stride pixels (the last window flush with the border), each window is resized to the
    model size and scored; the raw maps are resized back and stitched by averaging overlaps.
    The stitched map is smoothed with the kernel scaled by tile_size / model size (odd), and
    the image score is its max. `roi` (optional [h, w], nonzero = inside) hard-masks the
    stitched map before smoothing. Returns dict: ANOMALY_MAP float32 [h, w], ANOMALY_SCORE
    float32 scalar.
    """
    image = tf.convert_to_tensor(image)
    height, width = int(image.shape[0]), int(image.shape[1])
    tile_h, tile_w = min(tile_size, height), min(tile_size, width)
    ys = tile_offsets(height, tile_h, tile_stride)
    xs = tile_offsets(width, tile_w, tile_stride)
    windows = tf.stack([image[y:y + tile_h, x:x + tile_w] for y in ys for x in xs])
    outputs = model(prepare_images(windows, image_size, channels), training=False)
    maps = tf.image.resize(outputs[keys.RAW_ANOMALY_MAP][..., tf.newaxis], (tile_h, tile_w),
                           method="bilinear")[..., 0]
    total = tf.zeros((height, width))
    count = tf.zeros((height, width))
    ones = tf.ones((tile_h, tile_w))
    for i, (y, x) in enumerate((y, x) for y in ys for x in xs):
        pad = [[y, height - y - tile_h], [x, width - x - tile_w]]
        total += tf.pad(maps[i], pad)
        count += tf.pad(ones, pad)
    stitched = total / count
    if roi is not None:
        stitched *= tf.cast(tf.convert_to_tensor(roi) > 0, tf.float32)
    scale = tile_size / float(min(image_size))
    kernel = 1 if kernel_size <= 1 else int(round(kernel_size * scale)) // 2 * 2 + 1
    smoothed = smooth(stitched[tf.newaxis], kernel)[0]
    return {keys.ANOMALY_MAP: smoothed, keys.ANOMALY_SCORE: tf.reduce_max(smoothed)}
