"""Per-model scoring calibration on data the model may see: the smoothing window and the
image threshold (docs/method.md §5).

The test split is never read here. The calibration set is `pipeline.validation_dataset`
with its own seed stream and `repeats` passes (in patch mode its items are the grid patches
at stride = patch size, so that the window is chosen at the scale the model sees; the
threshold still comes from whole tiled validation images):

* **normals**: the clean validation images X of the first pass (label 0);
* **synthetic anomalies**: each validation image drawn `repeats` times through the training
  synthesis (no rotation or flips). A draw whose anomaly
  touches the ROI (M * ROI nonzero) is an anomaly (label 1); a draw whose anomaly lies
  entirely outside the ROI is a normal (label 0: the segmentator is trained to ignore it);
  a draw without an anomaly repeats a clean image and is left out.

`select_kernel` scores the set once per candidate window (the raw maps are computed once;
only the pooling differs) and keeps the window with the best image AUROC; ties go to the
window closest to the paper's 21 at 256 px. The threshold is then a quantile of the clean
normals' scores with that window. The pixel threshold of the defect mask is the pixel
F1-max of the smoothed maps of the whole set (clean normals all 0, each synthetic draw
against its mask inside the ROI), unless ``scoring.pixel_threshold`` gives one. The span of
the normalised score (`scoring.Decision`) is the min and max image score over the set and
the clean normals. Everything chosen is written to ``calibration.json`` and used by
evaluation, prediction and every export.
"""
import dataclasses
import math

import numpy as np
import tensorflow as tf
from absl import logging
from sklearn import metrics as skm

from grdnet_tf import keys, scoring
from grdnet_tf.data import pipeline, preprocess, tiling
from grdnet_tf.evaluation import metrics as metrics_lib

CALIBRATION_STREAM = 3  # a seed stream of its own (train 0, validation 1, shuffle 2)


def threshold_support_warning(num_normals, quantile):
    """A warning (or None) when `num_normals` are too few for the `quantile` to mean what
    it says: below 1 / (1 - quantile) normals the quantile is (nearly) the maximum of the
    scores (0.99 of 12 normals is the largest of 12 numbers)."""
    needed = int(math.ceil(1.0 / max(1.0 - quantile, 1e-12) - 1e-9))
    if num_normals >= needed:
        return None
    return (f"the threshold is the {quantile} quantile of only {num_normals} validation "
            f"normals, i.e. (nearly) their maximum: at least {needed} are needed for that "
            f"quantile to estimate a false-alarm rate of {1 - quantile:.2g}; add validation "
            f"images (validation/good or data.val_fraction) or lower "
            f"scoring.threshold_quantile")


@dataclasses.dataclass
class CalibrationSet:
    """Raw anomaly maps of the calibration set.

    Args:
        clean_maps: float32 [N, H, W] of the clean validation images (patch mode: patches).
        synthetic_maps: float32 [M, H, W] of the synthetic draws kept.
        synthetic_labels: int [M], 1 = anomaly inside the ROI, 0 = outside only.
        synthetic_masks: uint8 [M, H, W] {0, 1}: each draw's anomaly mask inside its ROI.
    """
    clean_maps: np.ndarray
    synthetic_maps: np.ndarray
    synthetic_labels: np.ndarray
    synthetic_masks: np.ndarray = None

    @property
    def masks(self):
        """Pixel ground truth [N + M, H, W] of `maps` (clean normals all 0)."""
        return np.concatenate([np.zeros(self.clean_maps.shape, np.uint8),
                               self.synthetic_masks])

    @property
    def maps(self):
        return np.concatenate([self.clean_maps, self.synthetic_maps])

    @property
    def labels(self):
        return np.concatenate([np.zeros(len(self.clean_maps), np.int64),
                               self.synthetic_labels])


def raw_maps(model, images, batch_size=16):
    """Raw segmentator maps [N, H, W] of model-size float images [N, H, W, C]."""
    maps = []
    for start in range(0, len(images), batch_size):
        out = model(tf.convert_to_tensor(images[start:start + batch_size]), training=False)
        maps.append(out[keys.RAW_ANOMALY_MAP].numpy())
    return np.concatenate(maps) if maps else np.zeros((0,), np.float32)


def calibration_set(model, config, val_cache, texture_cache=None, repeats=4, batch_size=16):
    """Builds the `CalibrationSet` of `val_cache` (clean images and synthetic draws)."""
    ds = pipeline.validation_dataset(config, val_cache, batch_size, texture_cache,
                                     repeats=repeats, stream=CALIBRATION_STREAM)
    first_pass = pipeline.validation_dataset(config, val_cache, batch_size, texture_cache,
                                             stream=CALIBRATION_STREAM)
    clean = np.concatenate([raw_maps(model, batch[keys.IMAGE], batch_size)
                            for batch in first_pass])
    maps, labels, masks = [], [], []
    for batch in ds:
        mask = batch[keys.MASK].numpy()
        target = (mask * batch[keys.ROI].numpy())[..., 0] > 0
        inside = target.reshape(len(mask), -1).max(axis=1)
        has_anomaly = mask.reshape(len(mask), -1).max(axis=1) > 0
        if not has_anomaly.any():
            continue
        out = model(batch[keys.PERTURBED], training=False)[keys.RAW_ANOMALY_MAP].numpy()
        maps.append(out[has_anomaly])
        labels.append(inside[has_anomaly].astype(np.int64))
        masks.append(target[has_anomaly].astype(np.uint8))
    height, width = config.data.image_size
    return CalibrationSet(
        clean_maps=clean,
        synthetic_maps=np.concatenate(maps) if maps else np.zeros((0, height, width),
                                                                  np.float32),
        synthetic_labels=np.concatenate(labels) if labels else np.zeros((0,), np.int64),
        synthetic_masks=np.concatenate(masks) if masks else np.zeros((0, height, width),
                                                                     np.uint8))


def image_scores(maps, kernel, batch_size=64):
    """Image scores [N] of raw maps (an [N, H, W] array, or a list of [h, w] maps of any
    sizes) with a smoothing window."""
    if not isinstance(maps, np.ndarray):
        return np.asarray([float(scoring.image_score(scoring.smooth(
            tf.constant(m[None]), kernel))[0]) for m in maps], np.float32)
    scores = []
    for start in range(0, len(maps), batch_size):
        smoothed = scoring.smooth(tf.constant(maps[start:start + batch_size]), kernel)
        scores.append(scoring.image_score(smoothed).numpy())
    return np.concatenate(scores) if scores else np.zeros((0,), np.float32)


def normal_maps(model, config, val_cache):
    """Raw maps of the clean validation images as they are scored at inference: an
    [N, H, W] array, or in patch mode a list of stitched working-size maps."""
    if not tiling.patch_mode(config):
        return raw_maps(model, preprocess.to_unit(val_cache.images))
    params = scoring.ScoringParams.from_run(config)
    maps = []
    for image, (h, w) in zip(val_cache.images, val_cache.sizes):
        working = preprocess.to_unit(image[:h, :w])
        maps.append(scoring.score_working_image(model, working, params)[
            keys.RAW_ANOMALY_MAP].numpy())
    return maps


def select_kernel(cal_set, candidates, reference):
    """The candidate window with the best image AUROC on `cal_set`.

    Returns (kernel, {kernel: auroc or None}). Without both classes every AUROC is None
    and `reference` is returned. Ties go to the candidate closest to `reference`.
    """
    labels = cal_set.labels
    if labels.min(initial=1) == labels.max(initial=0):
        return reference, {kernel: None for kernel in candidates}
    maps = cal_set.maps
    aurocs = {kernel: float(skm.roc_auc_score(labels, image_scores(maps, kernel)))
              for kernel in candidates}
    best = max(aurocs.values())
    winners = [k for k, v in aurocs.items() if v >= best - 1e-12]
    return min(winners, key=lambda k: (abs(k - reference), k)), aurocs


def smoothed_maps(maps, kernel, batch_size=64):
    """`scoring.smooth` of raw maps [N, H, W] (numpy in, numpy out)."""
    out = [scoring.smooth(tf.constant(maps[start:start + batch_size]), kernel).numpy()
           for start in range(0, len(maps), batch_size)]
    return np.concatenate(out) if out else np.zeros(maps.shape, np.float32)


def pixel_threshold(cal_set, kernel):
    """(threshold, F1) of the defect mask: the pixel F1-max of `cal_set`'s smoothed maps
    against its masks; (`scoring.DEFAULT_PIXEL_THRESHOLD`, None) without synthetic anomalies
    inside the ROI."""
    if not cal_set.synthetic_masks.any():
        return scoring.DEFAULT_PIXEL_THRESHOLD, None
    f1, threshold = metrics_lib.pixel_f1_max(list(cal_set.masks),
                                             list(smoothed_maps(cal_set.maps, kernel)))
    return float(threshold), f1


def calibrate(model, config, val_cache, texture_cache=None, log_fn=None):
    """Chooses the smoothing window (per `scoring.smoothing_kernel`), the image threshold,
    the pixel threshold (per `scoring.pixel_threshold`) and the normalised score's span.

    Returns the ``calibration.json`` payload: threshold, quantile, smoothing_kernel and how
    it was chosen, the candidates' validation AUROCs, the number of normals and synthetic
    anomalies, the clean normals' scores, pixel_threshold (source, validation F1) and
    normalization (min, max).
    """
    if len(val_cache) == 0:
        raise ValueError("cannot calibrate a threshold: the validation split is empty")
    image_size = tuple(config.data.image_size)
    reference = scoring.paper_kernel(image_size)
    explicit = int(config.scoring.smoothing_kernel)
    explicit_pixel = float(config.scoring.pixel_threshold)
    selecting = not explicit and config.scoring.smoothing_auto != "image_size"
    aurocs, cal_set = {}, None
    if selecting or not explicit_pixel:
        if log_fn:
            repeats = int(config.scoring.calibration_repeats)
            log_fn(f"calibration: scoring {len(val_cache)} validation images and {repeats} "
                   "synthetic anomalies of each"
                   + (" to choose the smoothing window among " + ", ".join(
                       map(str, scoring.candidate_kernels(
                           image_size, config.scoring.smoothing_candidates))) + ","
                      if selecting else "")
                   + " then the thresholds")
        cal_set = calibration_set(model, config, val_cache, texture_cache,
                                  repeats=int(config.scoring.calibration_repeats))
    if explicit:
        kernel, source = explicit, "config"
    elif not selecting:
        kernel, source = reference, "image_size"
    else:
        candidates = scoring.candidate_kernels(image_size, config.scoring.smoothing_candidates)
        kernel, aurocs = select_kernel(cal_set, candidates, reference)
        source = "validation" if any(v is not None for v in aurocs.values()) else "image_size"
    if selecting and not tiling.patch_mode(config):
        clean_maps = cal_set.clean_maps
    else:
        clean_maps = normal_maps(model, config, val_cache)
    scores = image_scores(clean_maps, kernel).tolist()
    quantile = float(config.scoring.threshold_quantile)
    threshold = scoring.calibrate_threshold(scores, quantile)
    result = {
        "threshold": threshold, "quantile": quantile, "num_images": len(scores),
        "scores": scores, "score_mean": float(np.mean(scores)),
        "score_max": float(np.max(scores)),
        "smoothing_kernel": int(kernel), "smoothing_source": source,
        "smoothing_candidates": {str(k): v for k, v in aurocs.items()},
    }
    warning = threshold_support_warning(len(scores), quantile)
    if warning:
        result["warning"] = warning
        logging.warning("calibration: %s", warning)
    result.update(_pixel_and_span(cal_set, kernel, explicit_pixel, scores))
    if cal_set is not None:
        result["num_synthetic_anomalies"] = int(cal_set.synthetic_labels.sum())
        result["num_synthetic_outside_roi"] = int((cal_set.synthetic_labels == 0).sum())
    if log_fn:
        chosen = (f"smoothing window {kernel} ({source}"
                  + (", validation image AUROC " + ", ".join(
                      f"{k}: {'n/a' if v is None else f'{v:.3f}'}" for k, v in aurocs.items())
                     if aurocs else "") + ")")
        log_fn(f"calibration: {chosen}; threshold {threshold:.4f} = quantile {quantile} of "
               f"{len(scores)} validation normals; pixel threshold "
               f"{result['pixel_threshold']:.4f} ({result['pixel_threshold_source']})")
    return result


def _pixel_and_span(cal_set, kernel, explicit_pixel, normal_scores):
    """calibration.json entries of the defect mask and of the normalised score."""
    if explicit_pixel:
        value, f1, source = explicit_pixel, None, "config"
    else:
        value, f1 = pixel_threshold(cal_set, kernel)
        source = "validation_f1" if f1 is not None else "default"
    scores = list(normal_scores)
    if cal_set is not None:
        scores += image_scores(cal_set.maps, kernel).tolist()
    return {"pixel_threshold": value, "pixel_threshold_source": source,
            "pixel_f1_validation": f1,
            "normalization": {"min": float(np.min(scores)), "max": float(np.max(scores)),
                              "source": "calibration set" if cal_set is not None
                              else "validation normals"}}
