"""Scoring a trained run on image files: a run's `Scorer`, streamed `Scored` images, and
the scored test split with all its metrics.

Images are read at their native size and go through `preprocess.model_input` (the same
resize the training cache and the SavedModel use), so these scores equal exported scores.
Pixel metrics are computed at the model resolution (`data.image_size`), or in patch mode at
the working resolution of the stitched map; ground truth and test ROIs are resized there
with nearest neighbour (`preprocess.model_mask`). The headline pixel metrics (pixel_auroc,
aupro, ...) use the raw pixel map (`scoring.ScoringParams.pixel_map`: the segmentator map
unless configured otherwise), as DRAEM and anomalib report them; the same metrics of the
smoothed pixel map carry a ``_smoothed`` suffix.

Evaluation (`grdnet_tf.evaluation.eval_lib`) and the learning curves of training both use it.
"""
import dataclasses

import numpy as np
import tensorflow as tf
from absl import logging

from grdnet_tf import keys, progress, scoring
from grdnet_tf.data import io, mvtec, preprocess
from grdnet_tf.evaluation import metrics as metrics_lib


class Scorer:
    """A run's model with its scoring settings; one traced graph for any input size.

    Args:
        run: `run_dir.LoadedRun`.
        threshold: overrides the run's calibrated threshold when given.
        use_roi: apply test ROIs as a hard mask of the map (when a sample has one).
        params: overrides the run's `scoring.ScoringParams` (e.g. another window).
    """

    def __init__(self, run, threshold=None, use_roi=False, params=None):
        self.run = run
        self.config = run.config
        self.params = params or scoring.ScoringParams.from_run(run.config, run.calibration)
        self.image_size = self.params.image_size
        self.channels = self.params.channels
        self.kernel = self.params.kernel
        self.threshold = run.threshold if threshold is None else float(threshold)
        # Pixel threshold and normalised-score span (scoring.Decision), None without an
        # image threshold.
        self.decision = (None if self.threshold is None else
                         scoring.Decision.from_run(run.calibration, self.threshold))
        self.use_roi = use_roi
        self.patches = self.params.patch_scale > 0
        self._score = tf.function(self._score_model_inputs, reduce_retracing=True)
        self._score_working = tf.function(
            self._score_working_image,
            input_signature=[tf.TensorSpec([None, None, self.channels], tf.float32),
                             tf.TensorSpec([None, None], tf.float32)])

    def _score_model_inputs(self, images, roi):
        return scoring.score_model_inputs(self.run.model, images, self.params, roi=roi)

    def _score_working_image(self, image, roi):
        return scoring.score_working_image(self.run.model, image, self.params, roi=roi)

    def model_inputs(self, image):
        """Native uint8 [h, w, c] -> float32 [H, W, C] at the model size, or in patch mode
        [h', w', C] at the working size."""
        if self.patches:
            return scoring.working_input(tf.constant(image), self.params)
        return preprocess.model_input(tf.constant(image[None]), self.image_size,
                                      self.channels)[0]

    def score_batch(self, images, rois):
        """Model-size float images [B, H, W, C] and ROIs [B, H, W] -> numpy outputs."""
        out = self._score(tf.stack(images), tf.stack(rois))
        return {k: v.numpy() for k, v in out.items()}

    def score_working(self, image, roi):
        """One working-size image [h', w', C] and its ROI [h', w'] -> numpy outputs."""
        return {k: v.numpy() for k, v in self._score_working(image, roi).items()}


@dataclasses.dataclass
class Scored:
    """One scored image: maps at the model resolution (patch mode: working resolution)."""
    path: str
    image: np.ndarray        # native uint8 [h, w, 3 or 1]
    anomaly_map: np.ndarray  # float32 [H, W], the smoothed pixel map (params.pixel_map)
    anomaly_score: float
    sample: object = None
    raw_map: np.ndarray = None  # float32 [H, W], the pixel map before smoothing
    reconstruction: np.ndarray = None  # float32 [H, W, C] in [0, 1] (model resolution)
    roi: np.ndarray = None  # uint8 [h, w] in {0, 1}: the ROI file as read (use_roi), or None


def iter_scored(scorer, items, batch_size=8, skip_bad_files=False):
    """Streams `Scored` results for samples (`mvtec.Sample`) or paths, in order.

    Memory stays bounded by the batch: nothing is kept after it is yielded.
    """
    batch = []
    roi_notes = io.MaskNotes("test ROI")

    def flush():
        images = [b[1] for b in batch]
        rois = [b[2] for b in batch]
        out = scorer.score_batch(images, rois)
        for (item, _, _, native, roi_read), amap, raw, score, rec in zip(
                batch, out[keys.ANOMALY_MAP], out[keys.RAW_ANOMALY_MAP],
                out[keys.ANOMALY_SCORE], out[keys.RECONSTRUCTION]):
            yield _scored(item, native, amap, raw, score, rec, roi_read)
        batch.clear()

    for item in items:
        path = item.path if isinstance(item, mvtec.Sample) else item
        try:
            native = io.read_image(path, None, 3 if scorer.channels == 3 else 1)
        except io.ImageReadError:
            if not skip_bad_files:
                raise
            logging.warning("skipping unreadable image %s", path)
            continue
        roi_path = getattr(item, "roi_path", None) if scorer.use_roi else None
        inputs = scorer.model_inputs(native)
        size = tuple(inputs.shape[:2])
        roi_read = (io.read_mask(roi_path, notes=roi_notes, image_shape=native.shape)
                    if roi_path else None)  # read once: Scored.roi carries it on
        roi = (preprocess.model_mask(roi_read[None], size)[0] if roi_path
               else tf.ones(size, tf.float32))
        if scorer.patches:  # one working-size image at a time
            out = scorer.score_working(inputs, roi)
            yield _scored(item, native, out[keys.ANOMALY_MAP], out[keys.RAW_ANOMALY_MAP],
                          out[keys.ANOMALY_SCORE], out[keys.RECONSTRUCTION], roi_read)
            continue
        batch.append((item, inputs, roi, native, roi_read))
        if len(batch) == batch_size:
            yield from flush()
    if batch:
        yield from flush()
    roi_notes.warn()


def _scored(item, native, anomaly_map, raw_map, score, reconstruction, roi=None):
    sample = item if isinstance(item, mvtec.Sample) else None
    return Scored(path=item.path if sample else item, image=native, anomaly_map=anomaly_map,
                  anomaly_score=float(score), sample=sample, raw_map=raw_map,
                  reconstruction=reconstruction, roi=roi)


@dataclasses.dataclass
class SplitScores:
    """A scored test split: all metrics, and per image (in index order) path, score, sample."""
    metrics: dict
    paths: list
    scores: list
    samples: list


def score_test_split(scorer, data_dir, batch_size=8):
    """Scores every test image of `data_dir` and computes all metrics (no files written).

    Returns `SplitScores`. Pixel metrics use the model resolution; images whose ground truth
    is missing are left out of them (noted).
    """
    samples = mvtec.index_test(data_dir, **mvtec.config_kwargs(scorer.config, test=True))
    labels, scores, maps, raw_maps, masks, rois, defects, paths, notes = ([] for _ in range(9))
    missing_gt = 0
    gt_notes, roi_notes = io.MaskNotes("ground-truth"), io.MaskNotes("test ROI")
    for scored in progress.counted(iter_scored(scorer, samples, batch_size), len(samples),
                                   "scoring test images", logging.info):
        s = scored.sample
        labels.append(s.label)
        scores.append(scored.anomaly_score)
        defects.append(s.defect)
        paths.append(s.path)
        maps.append(scored.anomaly_map)
        raw_maps.append(scored.raw_map)
        size = scored.anomaly_map.shape  # model resolution, or working size in patch mode
        if s.label == 0:
            masks.append(np.zeros(size, np.uint8))
        elif s.mask_path:
            masks.append(_mask_at(s.mask_path, size, scored.image.shape, gt_notes))
        else:
            masks.append(None)
            missing_gt += 1
        rois.append(_mask_at(s.roi_path, size, scored.image.shape, roi_notes)
                    if s.roi_path else None)
    gt_notes.warn()
    roi_notes.warn()
    if missing_gt:
        notes.append(f"{missing_gt} defect image(s) without ground truth are left out of the "
                     f"pixel metrics")
    have_rois = any(r is not None for r in rois)
    result = metrics_lib.evaluate_all(labels, scores, masks=masks, maps=raw_maps,
                                      defects=defects, threshold=scorer.threshold,
                                      rois=rois if have_rois else None)
    result.update(_smoothed_pixel_metrics(masks, maps, rois if have_rois else None))
    labels_np, scores_np = np.asarray(labels), np.asarray(scores)
    if len(set(labels)) < 2:
        notes.append("the test split has only one class: AUROC is undefined")
    folders = {}
    for folder in sorted(set(defects)):
        idx = [i for i, d in enumerate(defects) if d == folder]
        info = {"count": len(idx), "label": int(labels_np[idx[0]]),
                "mean_score": float(scores_np[idx].mean())}
        if scorer.threshold is not None:
            info["flagged_rate"] = float((scores_np[idx] > scorer.threshold).mean())
        folders[folder] = info
    if scorer.threshold is None:
        notes.append("no calibrated threshold and none was given: threshold metrics are "
                     "left out")
    result.update(folders=folders, notes=notes, num_images=len(labels), data_dir=data_dir,
                  use_roi=scorer.use_roi, threshold=scorer.threshold,
                  smoothing_kernel=scorer.kernel, pixel_maps="raw",
                  pixel_map=scorer.params.pixel_map, image_map=scorer.params.image_map,
                  residual_scale=scorer.params.residual_scale,
                  image_baseline=scorer.params.image_baseline is not None,
                  patch_scale=scorer.params.patch_scale)
    return SplitScores(metrics=result, paths=paths, scores=scores, samples=samples)


def _mask_at(path, size, image_shape, notes):
    """A mask file at `size` (nearest neighbour, {0, 1} uint8), as the model inputs' masks,
    checked against its image's native shape (`io.MaskNotes`)."""
    mask = io.read_mask(path, notes=notes, image_shape=image_shape)
    return preprocess.model_mask(mask[None], size)[0].numpy().astype(np.uint8)


def _smoothed_pixel_metrics(masks, maps, rois):
    """pixel_auroc_smoothed and aupro_smoothed (and pixel_auroc_roi_smoothed) of the
    smoothed maps, over the images with ground truth."""
    keep = [i for i, m in enumerate(masks) if m is not None]
    if not keep:
        return {}
    gt, smoothed = [masks[i] for i in keep], [maps[i] for i in keep]
    out = {"pixel_auroc_smoothed": metrics_lib.pixel_auroc(gt, smoothed),
           "aupro_smoothed": metrics_lib.aupro(gt, smoothed)}
    if rois is not None:
        inside = [np.ones(masks[i].shape, bool) if rois[i] is None else rois[i] for i in keep]
        out["pixel_auroc_roi_smoothed"] = metrics_lib.pixel_auroc(gt, smoothed, roi=inside)
    return out
