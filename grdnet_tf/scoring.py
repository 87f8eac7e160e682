"""The one scoring module: evaluation, prediction, calibration and every export use it.

Pipeline (docs/method.md §5), all TensorFlow ops so it runs inside a SavedModel graph:

  images (uint8 or float, any size, 1 or 3 channels)
    -> `preprocess.model_input`: the one resize (as in training), float32 on the 1/255 grid
    -> GRDNet: X̂ = generator(X) (E1 + decoder), A = segmentator(concat(X, X̂))  (raw map)
    -> optional hard ROI masking of A (and of the residual R, when a map uses it)
    -> `source_map`: the pixel map and the image map, each the segmentator map A (the
       paper, default), the residual R_n = clip(R / residual_scale, 0, 1) with
       R = mean over channels |X - X̂|, or their mean 0.5 (A + R_n) (`ScoringParams`)
    -> optional `ImageBaseline` (scoring.image_baseline="position"): the image map as a
       deviation from normal images at the same place, (map - mean) / std per pixel
    -> `smooth`: mean over a k x k window, stride 1, the map zero outside the image (the
       padding counts, as in DRAEM): a defect scores the same wherever it lies; TF's SAME
       average pooling divides by the valid pixels only, which smooths the border less and
       turns border artefacts into high scores (a 3x3 blob in a corner scores 1.0 under
       5x5, in the middle 0.36)
    -> image score = max of the smoothed image map (at model resolution); the outputs'
       maps are the pixel map
    -> maps and reconstructions resized back to the input resolution
    -> is_anomalous = score > threshold (calibrated on validation normals)
    -> anomaly_mask = map > pixel threshold (calibrated on validation normals and synthetic
       anomalies: the pixel F1-max), uint8 {0, 1} at the input resolution
    -> normalised_score = clip((score - threshold) / (max - min) + 0.5, 0, 1), min and max
       of the calibration set's image scores: the image threshold maps to 0.5 (anomalib's
       min-max normalisation); it only rescales, the verdict is the same

The window k is `ScoringParams.kernel`: the config's explicit window, else the one
calibrated for the model (calibration.json), else the paper's 21 scaled to the input size.
In patch mode (``data.patch_scale > 0``) an image is resized to its working size and scored
by overlapping tiles (`score_working_image`), whose raw maps are stitched by averaging
before the smoothing and the max, as the model was trained on patches of that scale.
"""
import dataclasses
import math

import numpy as np
import tensorflow as tf

from grdnet_tf import choices, keys
from grdnet_tf.data import preprocess, tiling

PAPER_KERNEL = 21        # the paper's smoothing window ...
PAPER_IMAGE_SIZE = 256   # ... for 256 px inputs


def odd_window(size):
    """The odd integer nearest to `size` (halves round up), at least 1."""
    return max(1, int(math.floor(size / 2.0)) * 2 + 1)


def paper_kernel(image_size):
    """The paper's 21x21 window scaled to the model input: 21 * min(H, W) / 256, odd, >= 1
    (11 at 128 px, 5 at 64 px)."""
    return odd_window(PAPER_KERNEL * min(image_size) / PAPER_IMAGE_SIZE)


def candidate_kernels(image_size, windows_at_256):
    """Candidate smoothing windows given at 256 px, scaled to `image_size`, odd, sorted,
    without repeats."""
    scale = min(image_size) / PAPER_IMAGE_SIZE
    return tuple(sorted({1 if w <= 1 else odd_window(w * scale) for w in windows_at_256}))


def smooth(anomaly_map, kernel_size):
    """Mean over kernel_size x kernel_size windows, stride 1, output the size of the input,
    zeros outside the map counted ([B, H, W]; odd kernel_size; 1 = identity)."""
    if kernel_size <= 1:
        return anomaly_map
    half = kernel_size // 2
    padded = tf.pad(tf.convert_to_tensor(anomaly_map)[..., tf.newaxis],
                    [[0, 0], [half, half], [half, half], [0, 0]])
    pooled = tf.nn.avg_pool2d(padded, ksize=kernel_size, strides=1, padding="VALID")
    return pooled[..., 0]


def image_score(smoothed_map):
    """Image anomaly score: max of the smoothed map, [B, H, W] -> [B]."""
    return tf.reduce_max(smoothed_map, axis=[1, 2])


SEGMENTATOR = "segmentator"   # the paper's map (scoring.pixel_map / image_map)
RESIDUAL_QUANTILE = 0.999     # residual_scale = this quantile of clean validation residuals


def residual_map(images, reconstruction):
    """Reconstruction residual R = mean over channels of |X - X̂|: [..., C] -> [...]."""
    images = tf.convert_to_tensor(images, tf.float32)
    return tf.reduce_mean(tf.abs(images - tf.cast(reconstruction, tf.float32)), axis=-1)


def source_map(name, seg, residual, scale):
    """The map named `name` (`choices.MAP_SOURCES`) of a segmentator map and a residual:
    "segmentator" = `seg` itself, "residual" = R_n = clip(residual / scale, 0, 1),
    "sum" = 0.5 * (seg + R_n). `residual` may be None for "segmentator"."""
    choices.check("map source", name, choices.MAP_SOURCES)
    if name == SEGMENTATOR:
        return seg
    normalised = tf.clip_by_value(tf.convert_to_tensor(residual, tf.float32) / float(scale),
                                  0.0, 1.0)
    if name == "residual":
        return normalised
    return 0.5 * (tf.convert_to_tensor(seg, tf.float32) + normalised)


POSITION = "position"   # scoring.image_baseline


@dataclasses.dataclass(frozen=True, eq=False)
class ImageBaseline:
    """What normal images score at each place of the image map (scoring.image_baseline=
    "position", docs/method.md §5): the image score is then taken from
    (map - mean) / std, how unusual the map is *for that place*, so that a specular
    highlight or an edge that is high on every normal part stops setting the maximum.

    Args:
        mean, std: float32 [H, W] at the model input size, the per-pixel mean and the
            floored standard deviation (`from_maps`) of the image map over normal images.
        num_images: how many normals they come from.
        std_floor: the floor applied to std (its median over the image).
    """
    mean: np.ndarray
    std: np.ndarray
    num_images: int = 0
    std_floor: float = 0.0

    def __post_init__(self):
        mean, std = np.asarray(self.mean), np.asarray(self.std)
        if mean.ndim != 2 or mean.shape != std.shape:
            raise ValueError(f"ImageBaseline mean {mean.shape} and std {std.shape} must be "
                             f"[H, W] maps of one shape")
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise ValueError("ImageBaseline mean must be finite and std finite and > 0")
        object.__setattr__(self, "mean", mean.astype(np.float32))
        object.__setattr__(self, "std", std.astype(np.float32))

    @classmethod
    def from_maps(cls, maps):
        """The baseline of normal images' maps [N, H, W] (N >= 2): per-pixel mean and
        standard deviation, the latter floored at its median over the image."""
        maps = np.asarray(maps, np.float64)
        if maps.ndim != 3:
            raise ValueError(f"ImageBaseline needs maps [N, H, W], got {maps.shape}")
        return cls.from_moments(len(maps), maps.sum(axis=0), (maps ** 2).sum(axis=0))

    @classmethod
    def from_moments(cls, count, total, total_of_squares):
        """`from_maps` of `count` maps given by their per-pixel sum and sum of squares
        (float64 [H, W]), so that the maps of a large training set need not be kept."""
        if count < 2:
            raise ValueError(f"ImageBaseline needs the maps of at least 2 normal images, "
                             f"got {count}")
        mean = np.asarray(total, np.float64) / count
        variance = np.asarray(total_of_squares, np.float64) / count - mean ** 2
        std = np.sqrt(np.maximum(variance, 0.0))
        floor = float(np.median(std))
        if not floor > 1e-6:   # normals that never vary: any deviation is unusual
            floor = max(float(std.max()), 1e-6)
        return cls(mean=mean, std=np.maximum(std, floor), num_images=int(count),
                   std_floor=floor)

    @property
    def shape(self):
        return tuple(self.mean.shape)

    def standardize(self, image_map):
        """(map - mean) / std of maps [..., H, W] (numpy or TF input, TF output)."""
        image_map = tf.convert_to_tensor(image_map, tf.float32)
        return (image_map - tf.constant(self.mean)) / tf.constant(self.std)


@dataclasses.dataclass(frozen=True)
class ScoringParams:
    """Everything that turns a model's maps into scores (and what an export records).

    Args:
        image_size: (H, W) the networks see (the patch size in patch mode).
        channels: 1 or 3.
        kernel: odd smoothing window (1 = none).
        patch_scale: working scale of patch mode; 0 = whole images resized to image_size.
        patch_stride: tile stride in patch mode.
        pixel_map: the map of the pixel outputs (`choices.MAP_SOURCES`, never "auto").
        image_map: the map whose smoothed max is the image score.
        residual_scale: the residual's normalisation (1.0 when no map uses it).
        image_baseline: optional `ImageBaseline` of the image map (whole-image mode, at
            image_size): the image score is taken from the map standardised by it.
    """
    image_size: tuple
    channels: int
    kernel: int
    patch_scale: float = 0.0
    patch_stride: int = 0
    pixel_map: str = SEGMENTATOR
    image_map: str = SEGMENTATOR
    residual_scale: float = 1.0
    image_baseline: ImageBaseline | None = None

    def __post_init__(self):
        choices.check("ScoringParams.pixel_map", self.pixel_map, choices.MAP_SOURCES)
        choices.check("ScoringParams.image_map", self.image_map, choices.MAP_SOURCES)
        if not 0.0 < self.residual_scale < math.inf:
            raise ValueError(f"ScoringParams.residual_scale={self.residual_scale!r} must be "
                             f"a finite number > 0")
        if self.image_baseline is not None:
            if self.patch_scale > 0:
                raise ValueError("ScoringParams.image_baseline needs whole-image scoring "
                                 "(patch_scale=0)")
            if self.image_baseline.shape != tuple(self.image_size):
                raise ValueError(f"ScoringParams.image_baseline is {self.image_baseline.shape}"
                                 f", the model input {tuple(self.image_size)}")

    @property
    def uses_residual(self):
        return SEGMENTATOR != self.pixel_map or SEGMENTATOR != self.image_map

    @classmethod
    def from_run(cls, config, calibration=None):
        """The run's scoring: `resolve_kernel`, `resolve_maps`, `resolve_image_baseline`
        and the config's data / patch settings."""
        return cls._of(config, calibration, resolve_image_baseline(config, calibration))

    @classmethod
    def uncalibrated(cls, config):
        """The scoring before any calibration (the calibration itself, learning curves):
        as `from_run` without calibration.json, and no image baseline, whose statistics
        only calibration makes."""
        return cls._of(config, None, None)

    @classmethod
    def _of(cls, config, calibration, image_baseline):
        patches = tiling.patch_mode(config)
        pixel_map, image_map, residual_scale = resolve_maps(config, calibration)
        return cls(image_size=tuple(int(v) for v in config.data.image_size),
                   channels=int(config.data.channels),
                   kernel=resolve_kernel(config, calibration),
                   patch_scale=float(config.data.patch_scale) if patches else 0.0,
                   patch_stride=tiling.patch_stride(config) if patches else 0,
                   pixel_map=pixel_map, image_map=image_map, residual_scale=residual_scale,
                   image_baseline=image_baseline)


DEFAULT_PIXEL_THRESHOLD = 0.5   # the segmentator's own decision boundary (sigmoid output)


@dataclasses.dataclass(frozen=True)
class Decision:
    """What turns scores and maps into verdicts (what an export records next to
    `ScoringParams`).

    Args:
        threshold: image threshold, score > threshold is anomalous.
        pixel_threshold: map > pixel_threshold is in the defect mask.
        score_min, score_max: the span of the normalised score (score_min < score_max).
    """
    threshold: float
    pixel_threshold: float = DEFAULT_PIXEL_THRESHOLD
    score_min: float = 0.0
    score_max: float = 1.0

    @classmethod
    def from_run(cls, calibration, threshold=None, pixel_threshold=None):
        """The run's decision: explicit values win over ``calibration.json``; a run
        calibrated before pixel thresholds gets `DEFAULT_PIXEL_THRESHOLD` and the span of a
        [0, 1] map (0, 1)."""
        calibration = calibration or {}
        if threshold is None:
            threshold = calibration.get("threshold")
        if threshold is None:
            raise ValueError("no image threshold: the run has no calibration.json threshold "
                             "and none was given")
        if pixel_threshold is None:
            pixel_threshold = calibration.get("pixel_threshold", DEFAULT_PIXEL_THRESHOLD)
        span = calibration.get("normalization") or {}
        return cls(threshold=float(threshold), pixel_threshold=float(pixel_threshold),
                   score_min=float(span.get("min", 0.0)), score_max=float(span.get("max", 1.0)))

    def normalize(self, score):
        """Normalised score in [0, 1] (numpy or TF input, TF output); threshold -> 0.5."""
        span = max(self.score_max - self.score_min, 1e-12)
        score = tf.convert_to_tensor(score, tf.float32)
        return tf.clip_by_value((score - self.threshold) / span + 0.5, 0.0, 1.0)

    def mask(self, anomaly_map):
        """Defect mask uint8 {0, 1} of a map (numpy or TF input, TF output)."""
        anomaly_map = tf.convert_to_tensor(anomaly_map, tf.float32)
        return tf.cast(anomaly_map > self.pixel_threshold, tf.uint8)


def resolve_kernel(config, calibration=None):
    """The smoothing window: `scoring.smoothing_kernel` when set (> 0), else the window in
    `calibration` (calibration.json), else `paper_kernel` of data.image_size."""
    explicit = int(config.scoring.smoothing_kernel)
    if explicit:
        return explicit
    if calibration and calibration.get("smoothing_kernel"):
        return int(calibration["smoothing_kernel"])
    return paper_kernel(tuple(config.data.image_size))


def resolve_maps(config, calibration=None):
    """(pixel_map, image_map, residual_scale): each map the config's explicit choice, for
    "auto" the one in `calibration` (calibration.json), else "segmentator"; the scale from
    `calibration` where a map uses the residual (1.0 otherwise or when it has none)."""
    calibration = calibration or {}
    names = []
    for key in ("pixel_map", "image_map"):
        name = config.scoring.get(key, SEGMENTATOR)
        if name == "auto":
            name = calibration.get(key) or SEGMENTATOR
            choices.check(f"calibration.json {key}", name, choices.MAP_SOURCES)
        names.append(name)
    scale = 1.0
    if any(name != SEGMENTATOR for name in names) and calibration.get("residual_scale"):
        scale = float(calibration["residual_scale"])
    return names[0], names[1], scale


def resolve_image_baseline(config, calibration=None):
    """The `ImageBaseline` of the run, or None: scoring.image_baseline "none" gives None;
    "position" and "auto" give calibration.json's baseline (its arrays loaded by
    `run_dir.read_calibration`), None for "auto" when calibration chose none; "position"
    without one is a ValueError (calibrate the run first)."""
    wanted = config.scoring.image_baseline
    if wanted == "none":
        return None
    entry = (calibration or {}).get("image_baseline")
    if entry is None or entry.get("mean") is None:
        if wanted == "auto":
            return None
        raise ValueError("config scoring.image_baseline='position' but the run's "
                         "calibration.json has no image baseline: recalibrate "
                         "(grdnet-calibrate) with that setting")
    return ImageBaseline(mean=entry["mean"], std=entry["std"],
                         num_images=int(entry.get("num_images", 0)),
                         std_floor=float(entry.get("std_floor", 0.0)))


def _scored_maps(seg, images, reconstruction, params, roi):
    """The one path from raw maps to outputs: ROI-masks the segmentator map (and the
    residual of `images` against `reconstruction`, when a map uses it), takes the pixel
    and image maps (`source_map`), smooths them and scores the image map.
    Returns RAW_ANOMALY_MAP (the raw pixel map), ANOMALY_MAP (its smoothing) and
    ANOMALY_SCORE (max over the last two axes of the smoothed image map)."""
    residual = None
    if params.uses_residual:
        residual = residual_map(images, reconstruction)
        if roi is not None:
            residual = residual * roi
    if roi is not None:
        seg = seg * roi
    batched = len(seg.shape) == 3

    def raw_and_smoothed(name):
        raw = source_map(name, seg, residual, params.residual_scale)
        return raw, smooth(raw if batched else raw[tf.newaxis], params.kernel)
    raw, smoothed = raw_and_smoothed(params.pixel_map)
    if params.image_baseline is not None:
        image_raw = (raw if params.image_map == params.pixel_map
                     else source_map(params.image_map, seg, residual, params.residual_scale))
        image_raw = params.image_baseline.standardize(image_raw)
        image_smoothed = smooth(image_raw if batched else image_raw[tf.newaxis],
                                params.kernel)
    elif params.image_map == params.pixel_map:
        image_smoothed = smoothed
    else:
        image_smoothed = raw_and_smoothed(params.image_map)[1]
    score = image_score(image_smoothed)
    if not batched:
        smoothed, score = smoothed[0], score[0]
    return {keys.RAW_ANOMALY_MAP: raw, keys.ANOMALY_MAP: smoothed, keys.ANOMALY_SCORE: score}


def score_model_inputs(model, images, params, roi=None):
    """Model-size float images [B, H, W, C] -> dict with model-resolution outputs.

    `params`: `ScoringParams` (window and maps).
    Returns RECONSTRUCTION [B, H, W, C], RAW_ANOMALY_MAP (the raw pixel map after the ROI
    mask) [B, H, W], ANOMALY_MAP (smoothed) [B, H, W] and ANOMALY_SCORE [B] (max of the
    smoothed image map).
    `roi`: optional float [B, H, W] hard mask applied to the raw maps before smoothing.
    """
    outputs = model(images, training=False)
    out = _scored_maps(outputs[keys.RAW_ANOMALY_MAP], images, outputs[keys.RECONSTRUCTION],
                       params, roi)
    out[keys.RECONSTRUCTION] = outputs[keys.RECONSTRUCTION]
    return out


def working_input(image, params):
    """Native image [h, w, 1|3] (uint8 or float) -> float32 [h', w', channels] at its
    working size (patch mode), made by `preprocess.model_input` like every model input."""
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    size = tiling.working_size(shape[0], shape[1], params.patch_scale, params.image_size)
    return preprocess.model_input(image[None], size, params.channels)[0]


def score_working_image(model, image, params, roi=None):
    """Scores one working-size image [h', w', C] (on the model-input grid) by tiles.

    The image is cut into `params.image_size` tiles every `params.patch_stride` pixels (the
    last tile flush with the border), all tiles go through the model as one batch, the raw
    maps and reconstructions are stitched by averaging overlaps, an optional ROI [h', w']
    hard-masks the stitched map (and the residual of the image against the stitched
    reconstruction, when a map uses it); the pixel map is then smoothed, the score is the
    max of the smoothed image map.
    Returns RECONSTRUCTION [h', w', C], RAW_ANOMALY_MAP and ANOMALY_MAP [h', w'],
    ANOMALY_SCORE scalar.
    """
    image = tf.convert_to_tensor(image, tf.float32)
    size = tf.shape(image)[:2]
    offsets = tiling.grid(size[0], size[1], params.image_size, params.patch_stride)
    tiles = tiling.extract(image, offsets, params.image_size)
    outputs = model(tiles, training=False)
    raw = tiling.stitch(outputs[keys.RAW_ANOMALY_MAP], offsets, size)
    reconstruction = tiling.stitch(outputs[keys.RECONSTRUCTION], offsets, size)
    out = _scored_maps(raw, image, reconstruction, params, roi)
    out[keys.RECONSTRUCTION] = reconstruction
    return out


def score_images(model, images, params, threshold, roi=None):
    """Full scoring of raw images at any resolution; outputs at the input resolution.

    Args:
        model: a GRDNet (or anything with the same `call` contract).
        images: uint8 or float [B, h, w, 1|3].
        params: `ScoringParams`; threshold: a `Decision`, or a float image threshold
            (scores above it are anomalous) with the default pixel threshold and span.
        roi: optional [B, h, w] (or [B, h, w, 1]) mask at the input resolution.

    Returns dict: RECONSTRUCTION float32 [B, h, w, C] in [0, 1], ANOMALY_MAP float32
    [B, h, w] in [0, 1], ANOMALY_SCORE float32 [B], IS_ANOMALOUS bool [B], ANOMALY_MASK
    uint8 [B, h, w] in {0, 1}, NORMALIZED_SCORE float32 [B] in [0, 1].
    """
    decision = threshold if isinstance(threshold, Decision) else Decision(float(threshold))
    images = tf.convert_to_tensor(images)
    input_size = spatial_size(images)
    if params.patch_scale > 0:
        out = _score_images_by_tiles(model, images, params, roi)
    else:
        model_roi = None if roi is None else preprocess.model_mask(roi, params.image_size)
        out = score_model_inputs(model, preprocess.model_input(images, params.image_size,
                                                               params.channels),
                                 params, roi=model_roi)
    anomaly_map = preprocess.resize(out[keys.ANOMALY_MAP][..., tf.newaxis], input_size)[..., 0]
    reconstruction = preprocess.resize(out[keys.RECONSTRUCTION], input_size)
    score = out[keys.ANOMALY_SCORE]
    anomaly_map = tf.clip_by_value(anomaly_map, 0.0, 1.0)
    return {
        keys.RECONSTRUCTION: tf.clip_by_value(reconstruction, 0.0, 1.0),
        keys.ANOMALY_MAP: anomaly_map,
        keys.ANOMALY_SCORE: score,
        keys.IS_ANOMALOUS: score > tf.cast(decision.threshold, score.dtype),
        keys.ANOMALY_MASK: decision.mask(anomaly_map),
        keys.NORMALIZED_SCORE: decision.normalize(score),
    }


def spatial_size(images):
    """(h, w) of [B, h, w, C] images: Python ints where the shape is static (a fixed-size
    edge export then folds every resize weight into a constant), else scalar tensors."""
    shape = tf.shape(images)
    return tuple(shape[axis] if images.shape[axis] is None else int(images.shape[axis])
                 for axis in (1, 2))


def _score_images_by_tiles(model, images, params, roi):
    """`score_working_image` over a batch of same-size images (working resolution)."""
    shape = tf.shape(images)
    size = tiling.working_size(*spatial_size(images), params.patch_scale, params.image_size)
    working = preprocess.model_input(images, size, params.channels)
    rois = (tf.ones(tf.concat([shape[:1], tf.stack(size)], 0)) if roi is None
            else preprocess.model_mask(roi, size))

    def one(args):
        image, image_roi = args
        out = score_working_image(model, image, params,
                                  roi=None if roi is None else image_roi)
        return {k: out[k] for k in (keys.RECONSTRUCTION, keys.ANOMALY_MAP,
                                    keys.ANOMALY_SCORE)}

    signature = {keys.RECONSTRUCTION: tf.TensorSpec([None, None, params.channels], tf.float32),
                 keys.ANOMALY_MAP: tf.TensorSpec([None, None], tf.float32),
                 keys.ANOMALY_SCORE: tf.TensorSpec([], tf.float32)}
    return tf.map_fn(one, (working, rois), fn_output_signature=signature)


def calibrate_threshold(normal_scores, quantile):
    """Threshold = the `quantile` of validation-normal image scores (linear interpolation)."""
    scores = np.asarray(normal_scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("cannot calibrate a threshold without validation images")
    return float(np.quantile(scores, quantile))
