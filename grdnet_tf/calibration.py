"""Per-model scoring calibration on data the model may see: the smoothing window and the
image threshold (docs/method.md §5).

The test split is never read here. The calibration set is `pipeline.validation_dataset`
with its own seed stream and `repeats` passes (in patch mode its items are the grid patches
at stride = patch size, so that the window is chosen at the scale the model sees; the
threshold still comes from whole tiled validation images):

* **normals**: the clean validation images X of the first pass (label 0);
* **synthetic anomalies**: each validation image drawn `repeats` times through the training
  synthesis (no rotation or flips), or with ``scoring.calibration_anomalies="defects"``
  through grdnet_tf.data.defects (spots, scratches, misplaced patches: a family the
  networks were not trained on). A draw whose anomaly
  touches the ROI (M * ROI nonzero) is an anomaly (label 1); a draw whose anomaly lies
  entirely outside the ROI is a normal (label 0: the segmentator is trained to ignore it);
  a draw without an anomaly repeats a clean image and is left out. The draws' sizes are the
  training synthesis', or ``scoring.calibration_mask_area_min / max`` when set (the size of
  the defects expected: real defects are often far smaller than the training anomalies).

`select_kernel` scores the set once per candidate window (the raw maps are computed once;
only the pooling differs) and keeps the window with the best image AUROC; ties go to the
window closest to the paper's 21 at 256 px. The threshold is then a quantile of the clean
normals' scores with that window. The pixel threshold of the defect mask is the pixel
F1-max of the smoothed maps of the whole set (clean normals all 0, each synthetic draw
against its mask inside the ROI), unless ``scoring.pixel_threshold`` gives one. The span of
the normalised score (`scoring.Decision`) is the min and max image score over the set and
the clean normals. Everything chosen is written to ``calibration.json`` and used by
evaluation, prediction and every export.

Map sources (``scoring.pixel_map`` / ``scoring.image_map``, `scoring.source_map`): the set
keeps each item's reconstruction residual R next to its segmentator map (one model call),
and residual_scale = the 0.999 quantile of R over the clean normals' pixels. With
image_map "auto" the (source, window) pair with the best image AUROC is chosen jointly
(ties: the segmentator, then the window rule above); with pixel_map "auto" the source
with the best pixel AUROC of the raw maps, as the pixel metrics are computed (ties: the
segmentator).
Image baseline (``scoring.image_baseline``, `scoring.ImageBaseline`): with "position" or
"auto", the image map of every training image (normals; `baseline_cache`) is computed once
and its per-pixel mean and floored standard deviation kept; "auto" adds the standardised
image map of each source to the joint choice (ties: no baseline). The validation images
never enter the statistics, so their scores and the threshold stay out-of-sample.
The thresholds and the span then use the chosen maps. In patch mode all of this is done on
the patch-level set (per-patch residuals, scale from the clean patches); the image
threshold still comes from whole tiled validation images scored with the chosen maps.
"""
import dataclasses
import math

import numpy as np
import tensorflow as tf
from absl import logging
from sklearn import metrics as skm

from grdnet_tf import choices, config as config_lib, keys, scoring
from grdnet_tf.data import defects, pipeline, preprocess, tiling
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
        clean_residuals, synthetic_residuals: float32 like the maps, the reconstruction
            residuals R (`scoring.residual_map`) of the same items; None when not kept.
        residual_scale: the `scoring.RESIDUAL_QUANTILE` of the clean residuals' pixels.
    """
    clean_maps: np.ndarray
    synthetic_maps: np.ndarray
    synthetic_labels: np.ndarray
    synthetic_masks: np.ndarray = None
    clean_residuals: np.ndarray = None
    synthetic_residuals: np.ndarray = None
    residual_scale: float = 1.0

    @property
    def residuals(self):
        """Residuals [N + M, H, W] of `maps`, or None."""
        if self.clean_residuals is None:
            return None
        return np.concatenate([self.clean_residuals, self.synthetic_residuals])

    def sources(self):
        """The map sources this set can give (`source_maps`)."""
        if self.clean_residuals is None:
            return (scoring.SEGMENTATOR,)
        return choices.MAP_SOURCES

    def clean_source_maps(self, name):
        """Raw maps [N, H, W] of the source `name` of the clean normals."""
        return np.asarray(scoring.source_map(name, self.clean_maps, self.clean_residuals,
                                             self.residual_scale))

    def source_maps(self, name):
        """Raw maps [N + M, H, W] of the source `name` (`scoring.source_map`)."""
        return np.asarray(scoring.source_map(name, self.maps, self.residuals,
                                             self.residual_scale))

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


def model_maps(model, images):
    """(segmentator maps, residuals) [B, H, W] of one batch of model-size float images
    [B, H, W, C], from one model call."""
    images = tf.convert_to_tensor(images, tf.float32)
    out = model(images, training=False)
    return (out[keys.RAW_ANOMALY_MAP].numpy(),
            scoring.residual_map(images, out[keys.RECONSTRUCTION]).numpy())


def raw_maps(model, images, batch_size=16):
    """(segmentator maps, residuals) [N, H, W] of model-size float images [N, H, W, C]."""
    pairs = [model_maps(model, images[start:start + batch_size])
             for start in range(0, len(images), batch_size)]
    if not pairs:
        return np.zeros((0,), np.float32), np.zeros((0,), np.float32)
    return tuple(np.concatenate(parts) for parts in zip(*pairs))


def residual_scale(clean_residuals):
    """`scoring.RESIDUAL_QUANTILE` of the clean residuals' pixels (1.0 when that is 0)."""
    if clean_residuals is None or not np.size(clean_residuals):
        return 1.0
    scale = float(np.quantile(clean_residuals, scoring.RESIDUAL_QUANTILE))
    return scale if scale > 0.0 else 1.0


def synthesis_config(config):
    """`config` with the synthetic anomalies' sizes of the calibration set:
    ``scoring.calibration_mask_area_min / max`` in place of the training synthesis' when
    they are set (> 0), else `config` itself."""
    low, high = (config.scoring.calibration_mask_area_min,
                 config.scoring.calibration_mask_area_max)
    if not high:
        return config
    return config_lib.with_overrides(config, {"synthesis.mask_area_min": low,
                                              "synthesis.mask_area_max": high})


def anomaly_family(config):
    """(family, defect_area) of the calibration set's synthetic anomalies:
    ``scoring.calibration_anomalies`` ("training": the training synthesis; "defects":
    grdnet_tf.data.defects) and the defects' area range (``scoring.calibration_mask_area_*``
    when set, else the module's)."""
    family = config.scoring.get("calibration_anomalies", pipeline.TRAINING)
    low, high = (config.scoring.calibration_mask_area_min,
                 config.scoring.calibration_mask_area_max)
    return family, ((low, high) if high else (defects.AREA_MIN, defects.AREA_MAX))


def pixel_family(config):
    """The family whose draws choose the pixel map and the pixel threshold:
    ``scoring.pixel_calibration_anomalies``, or `anomaly_family`'s when "same" (the
    default, and runs written before the key existed)."""
    family = config.scoring.get("pixel_calibration_anomalies", "same")
    return anomaly_family(config)[0] if family == "same" else family


def calibration_set(model, config, val_cache, texture_cache=None, repeats=4, batch_size=16,
                    family=None, clean_from=None):
    """Builds the `CalibrationSet` of `val_cache` (clean images and synthetic draws of
    `anomaly_family`, or of `family` when given; the training family's sizes per
    `synthesis_config`). `clean_from`: a set of the same `val_cache` whose clean maps and
    residuals are taken instead of scoring the clean images again."""
    configured, defect_area = anomaly_family(config)
    family = family or configured
    ds = pipeline.validation_dataset(synthesis_config(config), val_cache, batch_size,
                                     texture_cache, repeats=repeats, stream=CALIBRATION_STREAM,
                                     family=family, defect_area=defect_area)
    if clean_from is not None:
        clean_maps, clean_residuals = clean_from.clean_maps, clean_from.clean_residuals
    else:
        first_pass = pipeline.validation_dataset(config, val_cache, batch_size, texture_cache,
                                                 stream=CALIBRATION_STREAM)
        clean = [model_maps(model, batch[keys.IMAGE]) for batch in first_pass]
        clean_maps = np.concatenate([c[0] for c in clean])
        clean_residuals = np.concatenate([c[1] for c in clean])
    maps, residuals, labels, masks = [], [], [], []
    for batch in ds:
        mask = batch[keys.MASK].numpy()
        target = (mask * batch[keys.ROI].numpy())[..., 0] > 0
        inside = target.reshape(len(mask), -1).max(axis=1)
        has_anomaly = mask.reshape(len(mask), -1).max(axis=1) > 0
        if not has_anomaly.any():
            continue
        seg, residual = model_maps(model, batch[keys.PERTURBED])
        maps.append(seg[has_anomaly])
        residuals.append(residual[has_anomaly])
        labels.append(inside[has_anomaly].astype(np.int64))
        masks.append(target[has_anomaly].astype(np.uint8))
    height, width = config.data.image_size
    empty = np.zeros((0, height, width), np.float32)
    return CalibrationSet(
        clean_maps=clean_maps,
        synthetic_maps=np.concatenate(maps) if maps else empty,
        synthetic_labels=np.concatenate(labels) if labels else np.zeros((0,), np.int64),
        synthetic_masks=np.concatenate(masks) if masks else empty.astype(np.uint8),
        clean_residuals=clean_residuals,
        synthetic_residuals=np.concatenate(residuals) if residuals else empty,
        residual_scale=residual_scale(clean_residuals))


def image_scores(maps, kernel, batch_size=64, baseline=None):
    """Image scores [N] of raw maps (an [N, H, W] array, or a list of [h, w] maps of any
    sizes) with a smoothing window, standardised first by an optional
    `scoring.ImageBaseline`."""
    if not isinstance(maps, np.ndarray):
        if baseline is not None:
            raise ValueError("an image baseline needs maps of the model size (an [N, H, W] "
                             "array), not working-size maps of patch mode")
        return np.asarray([float(scoring.image_score(scoring.smooth(
            tf.constant(m[None]), kernel))[0]) for m in maps], np.float32)
    scores = []
    for start in range(0, len(maps), batch_size):
        chunk = tf.constant(maps[start:start + batch_size])
        if baseline is not None:
            chunk = baseline.standardize(chunk)
        smoothed = scoring.smooth(chunk, kernel)
        scores.append(scoring.image_score(smoothed).numpy())
    return np.concatenate(scores) if scores else np.zeros((0,), np.float32)


def normal_maps(model, config, val_cache, params=None):
    """Raw image maps (`params.image_map`, default the segmentator's) of the clean
    validation images as they are scored at inference: an [N, H, W] array, or in patch mode
    a list of stitched working-size maps."""
    params = params or scoring.ScoringParams.uncalibrated(config)
    if not tiling.patch_mode(config):
        seg, residual = raw_maps(model, preprocess.to_unit(val_cache.images))
        return np.asarray(scoring.source_map(params.image_map, seg, residual,
                                             params.residual_scale))
    params = dataclasses.replace(params, pixel_map=params.image_map)
    maps = []
    for image, (h, w) in zip(val_cache.images, val_cache.sizes):
        working = preprocess.to_unit(image[:h, :w])
        maps.append(scoring.score_working_image(model, working, params)[
            keys.RAW_ANOMALY_MAP].numpy())
    return maps


def select_kernel(cal_set, candidates, reference, source=scoring.SEGMENTATOR):
    """The candidate window with the best image AUROC on `cal_set`'s `source` maps.

    Returns (kernel, {kernel: auroc or None}). Without both classes every AUROC is None
    and `reference` is returned. Ties go to the candidate closest to `reference`.
    """
    _, kernel, aurocs = select_image_map(cal_set, (source,), candidates, reference)
    return kernel, aurocs[source]


def select_image_map(cal_set, sources, candidates, reference):
    """The (source, window) pair with the best image AUROC on `cal_set`.

    Returns (source, kernel, {source: {kernel: auroc or None}}). Without both classes every
    AUROC is None and (first source, `reference`) is returned. Ties go to the earlier
    source (`choices.MAP_SOURCES` order: the segmentator first), then to the window
    closest to `reference`.
    """
    source, _, kernel, aurocs = select_image_scoring(cal_set, sources, candidates, reference)
    return source, kernel, aurocs["none"]


def select_image_scoring(cal_set, sources, candidates, reference, baselines=None,
                         options=("none",)):
    """The (source, image baseline, window) triple with the best image AUROC on `cal_set`.

    `options`: the image baselines to try, "none" and / or "position" (then `baselines`
    gives each source's `scoring.ImageBaseline`). Returns (source, option, kernel,
    {option: {source: {kernel: auroc or None}}}). Ties go to the earlier option, then to
    the earlier source, then to the window closest to `reference`.
    """
    labels = cal_set.labels
    if labels.min(initial=1) == labels.max(initial=0):
        return sources[0], options[0], reference, {
            o: {s: {k: None for k in candidates} for s in sources} for o in options}
    aurocs = {}
    for option in options:
        aurocs[option] = {}
        for source in sources:
            maps = cal_set.source_maps(source)
            baseline = baselines[source] if option == scoring.POSITION else None
            aurocs[option][source] = {
                kernel: float(skm.roc_auc_score(labels, image_scores(maps, kernel,
                                                                     baseline=baseline)))
                for kernel in candidates}
    best = max(v for table in aurocs.values() for row in table.values() for v in row.values())
    winners = [(j, i, abs(k - reference), k, s, o)
               for j, o in enumerate(options) for i, s in enumerate(sources)
               for k, v in aurocs[o][s].items() if v >= best - 1e-12]
    *_, kernel, source, option = min(winners)
    return source, option, kernel, aurocs


def image_baselines(model, config, baseline_cache, sources, residual_scale, log_fn=None,
                    batch_size=16):
    """{source: `scoring.ImageBaseline`} of the image maps of `baseline_cache` (the
    training images: normals the calibration set never uses), one model pass."""
    if baseline_cache is None or len(baseline_cache) < 2:
        raise ValueError(f"config scoring.image_baseline="
                         f"{config.scoring.image_baseline!r} needs the training images "
                         f"(at least 2) for the per-pixel normal statistics")
    if log_fn:
        log_fn(f"calibration: per-pixel statistics of the image map over "
               f"{len(baseline_cache)} training images (scoring.image_baseline)")
    moments = {}   # source: [sum, sum of squares], float64 [H, W]; maps are not kept
    for start in range(0, len(baseline_cache), batch_size):
        seg, residual = model_maps(model, preprocess.to_unit(
            baseline_cache.images[start:start + batch_size]))
        for source in sources:
            maps = np.asarray(scoring.source_map(source, seg, residual, residual_scale),
                              np.float64)
            acc = moments.setdefault(source, [0.0, 0.0])
            acc[0] = acc[0] + maps.sum(axis=0)
            acc[1] = acc[1] + (maps ** 2).sum(axis=0)
    return {source: scoring.ImageBaseline.from_moments(len(baseline_cache), *moments[source])
            for source in sources}


def select_pixel_map(cal_set, sources, kernel):
    """The source whose maps, smoothed with `kernel` (1 = raw), have the best pixel AUROC
    on `cal_set`.

    Returns (source, {source: auroc or None}); without synthetic anomaly pixels every
    AUROC is None and the first source is returned. Ties go to the earlier source.
    """
    if cal_set.synthetic_masks is None or not cal_set.synthetic_masks.any():
        return sources[0], {s: None for s in sources}
    masks = list(cal_set.masks)
    aurocs = {s: metrics_lib.pixel_auroc(masks, list(smoothed_maps(cal_set.source_maps(s),
                                                                   kernel)))
              for s in sources}
    best = max(aurocs.values())
    return next(s for s in sources if aurocs[s] >= best - 1e-12), aurocs


def smoothed_maps(maps, kernel, batch_size=64):
    """`scoring.smooth` of raw maps [N, H, W] (numpy in, numpy out)."""
    out = [scoring.smooth(tf.constant(maps[start:start + batch_size]), kernel).numpy()
           for start in range(0, len(maps), batch_size)]
    return np.concatenate(out) if out else np.zeros(maps.shape, np.float32)


def pixel_threshold(cal_set, kernel, source=scoring.SEGMENTATOR):
    """(threshold, F1) of the defect mask: the pixel F1-max of `cal_set`'s smoothed
    `source` maps against its masks; (`scoring.DEFAULT_PIXEL_THRESHOLD`, None) without
    synthetic anomalies inside the ROI."""
    if not cal_set.synthetic_masks.any():
        return scoring.DEFAULT_PIXEL_THRESHOLD, None
    f1, threshold = metrics_lib.pixel_f1_max(
        list(cal_set.masks), list(smoothed_maps(cal_set.source_maps(source), kernel)))
    return float(threshold), f1


def calibrate(model, config, val_cache, texture_cache=None, log_fn=None,
              baseline_cache=None):
    """Chooses the smoothing window (per `scoring.smoothing_kernel`), the map sources (per
    `scoring.pixel_map` / `scoring.image_map`), the image baseline (per
    `scoring.image_baseline`, from `baseline_cache`: the training images), the image
    threshold, the pixel threshold (per `scoring.pixel_threshold`) and the normalised
    score's span.

    Returns the ``calibration.json`` payload: threshold, quantile, smoothing_kernel and how
    it was chosen, the candidates' validation AUROCs, pixel_map / image_map (how chosen, the
    candidates' validation AUROCs under "auto"), residual_scale, the number of normals and
    synthetic anomalies, the clean normals' scores, pixel_threshold (source, validation F1)
    and normalization (min, max); with scoring.image_baseline other than "none", also
    image_baseline (its arrays in memory: `run_dir.write_calibration` stores them) and how
    it was chosen.
    """
    if len(val_cache) == 0:
        raise ValueError("cannot calibrate a threshold: the validation split is empty")
    image_size = tuple(config.data.image_size)
    reference = scoring.paper_kernel(image_size)
    explicit = int(config.scoring.smoothing_kernel)
    explicit_pixel = float(config.scoring.pixel_threshold)
    selecting = not explicit and config.scoring.smoothing_auto != "image_size"
    wanted = {key: config.scoring.get(key, scoring.SEGMENTATOR)
              for key in ("pixel_map", "image_map")}
    with_residual = any(v != scoring.SEGMENTATOR for v in wanted.values())
    wanted_baseline = config.scoring.image_baseline
    options = ((scoring.POSITION,) if wanted_baseline == scoring.POSITION
               else ("none", scoring.POSITION) if wanted_baseline == "auto" else ("none",))
    cal_set = None
    if selecting or not explicit_pixel or with_residual or wanted_baseline != "none":
        if log_fn:
            repeats = int(config.scoring.calibration_repeats)
            low, high = (config.scoring.calibration_mask_area_min,
                         config.scoring.calibration_mask_area_max)
            family, _ = anomaly_family(config)
            log_fn(f"calibration: scoring {len(val_cache)} validation images and {repeats} "
                   "synthetic anomalies of each"
                   + (" (defect-like: spots, scratches, patches; "
                      "scoring.calibration_anomalies)" if family == pipeline.DEFECTS else "")
                   + (f" ({100 * low:g}-{100 * high:g} % of the image, "
                      "scoring.calibration_mask_area_*)" if high else "")
                   + (" to choose the smoothing window among " + ", ".join(
                       map(str, scoring.candidate_kernels(
                           image_size, config.scoring.smoothing_candidates))) + ","
                      if selecting else "")
                   + " then the thresholds")
        cal_set = calibration_set(model, config, val_cache, texture_cache,
                                  repeats=int(config.scoring.calibration_repeats))
    pixel_set = cal_set
    family, pixels_from = anomaly_family(config)[0], pixel_family(config)
    if cal_set is not None and pixels_from != family and (
            wanted["pixel_map"] == "auto" or not explicit_pixel):
        if log_fn:
            log_fn(f"calibration: the pixel map and threshold are chosen on "
                   f"{int(config.scoring.calibration_repeats)} draws of the {pixels_from} "
                   f"family per validation image (scoring.pixel_calibration_anomalies)")
        pixel_set = calibration_set(model, config, val_cache, texture_cache,
                                    repeats=int(config.scoring.calibration_repeats),
                                    family=pixels_from, clean_from=cal_set)
    image_sources = (cal_set.sources() if wanted["image_map"] == "auto"
                     else (wanted["image_map"],))
    if explicit:
        kernel, source, candidates = explicit, "config", (explicit,)
    elif not selecting:
        kernel, source, candidates = reference, "image_size", (reference,)
    else:
        candidates = scoring.candidate_kernels(image_size, config.scoring.smoothing_candidates)
    baselines = None
    if wanted_baseline != "none":
        baselines = image_baselines(model, config, baseline_cache, image_sources,
                                    cal_set.residual_scale, log_fn)
    image_map, image_option, image_aurocs, option_aurocs = (image_sources[0], options[0],
                                                            {}, {})
    if selecting or len(image_sources) > 1 or len(options) > 1:   # jointly
        image_map, image_option, chosen, option_aurocs = select_image_scoring(
            cal_set, image_sources, candidates, reference, baselines, options)
        image_aurocs = option_aurocs[image_option]
    aurocs = image_aurocs.get(image_map, {}) if selecting else {}
    baseline = baselines[image_map] if image_option == scoring.POSITION else None
    if selecting:
        kernel = chosen
        source = "validation" if any(v is not None for v in aurocs.values()) else "image_size"
    pixel_map, pixel_aurocs = wanted["pixel_map"], {}
    if pixel_map == "auto":
        # On the raw maps (window 1): the pixel metrics (pixel AUROC, AUPRO; DRAEM's and
        # anomalib's convention) are computed on the raw map.
        pixel_map, pixel_aurocs = select_pixel_map(pixel_set, pixel_set.sources(), 1)
    scale = cal_set.residual_scale if cal_set is not None else 1.0
    params = dataclasses.replace(scoring.ScoringParams.uncalibrated(config), kernel=int(kernel),
                                 pixel_map=pixel_map, image_map=image_map,
                                 image_baseline=baseline)
    if params.uses_residual:
        params = dataclasses.replace(params, residual_scale=scale)
    if selecting and not tiling.patch_mode(config):
        clean_maps = cal_set.clean_source_maps(image_map)
    else:
        clean_maps = normal_maps(model, config, val_cache, params)
    scores = image_scores(clean_maps, kernel, baseline=baseline).tolist()
    quantile = float(config.scoring.threshold_quantile)
    threshold = scoring.calibrate_threshold(scores, quantile)
    result = {
        "threshold": threshold, "quantile": quantile, "num_images": len(scores),
        "scores": scores, "score_mean": float(np.mean(scores)),
        "score_max": float(np.max(scores)),
        "smoothing_kernel": int(kernel), "smoothing_source": source,
        "smoothing_candidates": {str(k): v for k, v in aurocs.items()},
        "pixel_map": pixel_map, "image_map": image_map,
        "pixel_map_source": _map_source(wanted["pixel_map"], pixel_aurocs),
        "image_map_source": _map_source(wanted["image_map"], image_aurocs
                                        if len(image_sources) > 1 else {}),
        "residual_scale": float(scale),
    }
    if wanted["image_map"] == "auto":
        result["image_map_candidates"] = {
            s: {str(k): v for k, v in row.items()} for s, row in image_aurocs.items()}
    if wanted["pixel_map"] == "auto":
        result["pixel_map_candidates"] = pixel_aurocs
    if wanted_baseline != "none":
        result.update(_baseline_entries(baseline, image_map, wanted_baseline, option_aurocs))
    warning = threshold_support_warning(len(scores), quantile)
    if warning:
        result["warning"] = warning
        logging.warning("calibration: %s", warning)
    result.update(_pixel_and_span(cal_set, pixel_set, params, explicit_pixel, scores))
    if cal_set is not None:
        result["num_synthetic_anomalies"] = int(cal_set.synthetic_labels.sum())
        result["num_synthetic_outside_roi"] = int((cal_set.synthetic_labels == 0).sum())
        result["calibration_anomalies"] = family
        result["pixel_calibration_anomalies"] = family if pixel_set is cal_set else pixels_from
    if pixel_set is not cal_set:
        result["pixel_num_synthetic_anomalies"] = int(pixel_set.synthetic_labels.sum())
    if log_fn:
        chosen = (f"smoothing window {kernel} ({source}"
                  + (", validation image AUROC " + ", ".join(
                      f"{k}: {_fmt(v)}" for k, v in aurocs.items())
                     if aurocs else "") + ")")
        maps = _map_line(result, kernel)
        if wanted_baseline != "none":
            maps = (maps + "; " if maps else "") + _baseline_line(result, kernel)
        log_fn(f"calibration: {chosen}; {maps + '; ' if maps else ''}threshold "
               f"{threshold:.4f} = quantile {quantile} of {len(scores)} validation normals; "
               f"pixel threshold {result['pixel_threshold']:.4f} "
               f"({result['pixel_threshold_source']})")
    return result


def _fmt(value):
    return "n/a" if value is None else f"{value:.3f}"


def _map_source(wanted, aurocs):
    """How a map source was chosen: "config", "validation" or "default" (auto without an
    AUROC: the segmentator)."""
    if wanted != "auto":
        return "config"
    if any(v is not None for v in _flat(aurocs)):
        return "validation"
    return "default"


def _flat(aurocs):
    for value in aurocs.values():
        yield from (value.values() if isinstance(value, dict) else (value,))


def _map_line(result, kernel):
    """The log's account of the map sources chosen and why; "" for the paper's maps set
    in the config (the default, nothing was chosen)."""
    if all(result[key] == scoring.SEGMENTATOR and result[key + "_source"] == "config"
           for key in ("image_map", "pixel_map")):
        return ""
    parts = []
    for key, what in (("image_map", "image"), ("pixel_map", "pixel")):
        line = f"{what} map {result[key]} ({result[key + '_source']}"
        candidates = result.get(key + "_candidates")
        if candidates:
            where = f"at window {kernel}" if what == "image" else "of the raw maps"
            line += f", validation {what} AUROC {where} " + ", ".join(
                f"{s}: {_fmt(v.get(str(kernel)) if isinstance(v, dict) else v)}"
                for s, v in candidates.items())
        parts.append(line + ")")
    if result["pixel_map"] != scoring.SEGMENTATOR or result["image_map"] != scoring.SEGMENTATOR:
        parts.append(f"residual scale {result['residual_scale']:.4f}")
    return "; ".join(parts)


def _baseline_entries(baseline, image_map, wanted, option_aurocs):
    """calibration.json entries of the image baseline: the baseline (None when "auto"
    chose none), how it was chosen, and under "auto" each option's validation AUROCs."""
    entries = {"image_baseline": None if baseline is None else {
        "mean": baseline.mean, "std": baseline.std, "num_images": baseline.num_images,
        "std_floor": baseline.std_floor, "image_map": image_map,
        "statistics_from": "training images"},
        "image_baseline_source": "config" if wanted != "auto" else _map_source(
            wanted, {(o, s): row for o, table in option_aurocs.items()
                     for s, row in table.items()})}
    if wanted == "auto":
        entries["image_baseline_candidates"] = {
            option: {s: {str(k): v for k, v in row.items()} for s, row in table.items()}
            for option, table in option_aurocs.items()}
    return entries


def _baseline_line(result, kernel):
    """The log's account of the image baseline."""
    line = (f"image baseline {'position' if result['image_baseline'] else 'none'} "
            f"({result['image_baseline_source']}")
    candidates = result.get("image_baseline_candidates")
    if candidates:
        image_map = result["image_map"]
        line += f", validation image AUROC of the {image_map} map at window {kernel} " + \
            ", ".join(f"{o}: {_fmt(t.get(image_map, {}).get(str(kernel)))}"
                      for o, t in candidates.items())
    return line + ")"


def _pixel_and_span(cal_set, pixel_set, params, explicit_pixel, normal_scores):
    """calibration.json entries of the defect mask (params.pixel_map, threshold on
    `pixel_set`) and of the normalised score (params.image_map, on `cal_set`)."""
    if explicit_pixel:
        value, f1, source = explicit_pixel, None, "config"
    else:
        value, f1 = pixel_threshold(pixel_set, params.kernel, params.pixel_map)
        source = "validation_f1" if f1 is not None else "default"
    scores = list(normal_scores)
    if cal_set is not None:
        scores += image_scores(cal_set.source_maps(params.image_map), params.kernel,
                               baseline=params.image_baseline).tolist()
    return {"pixel_threshold": value, "pixel_threshold_source": source,
            "pixel_f1_validation": f1,
            "normalization": {"min": float(np.min(scores)), "max": float(np.max(scores)),
                              "source": "calibration set" if cal_set is not None
                              else "validation normals"}}
