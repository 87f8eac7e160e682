"""Scoring a trained run on image files: a run's `Scorer`, streamed `Scored` images, and
the scored test split with all its metrics.

Images are read at their native size and go through `scoring.prepare_images` (the same
resize the SavedModel does), so these scores equal exported scores. Pixel metrics are
computed at the model resolution (`data.image_size`); ground truth and test ROIs are resized
there with nearest neighbour. With `scoring.tile_size` > 0, each image is scored by tiles at
its native resolution (`scoring.score_tiled`) and pixel metrics use the native resolution.

Evaluation (`grdnet_tf.evaluation.eval_lib`) and the learning curves of training both use it.
"""
import dataclasses

import numpy as np
import tensorflow as tf
from absl import logging

from grdnet_tf import keys, scoring
from grdnet_tf.data import io, mvtec
from grdnet_tf.evaluation import metrics as metrics_lib


class Scorer:
    """A run's model with its scoring settings; one traced graph for any input size.

    Args:
        run: `run_dir.LoadedRun`.
        threshold: overrides the run's calibrated threshold when given.
        use_roi: apply test ROIs as a hard mask of the map (when a sample has one).
    """

    def __init__(self, run, threshold=None, use_roi=False):
        self.run = run
        self.config = run.config
        self.image_size = tuple(run.config.data.image_size)
        self.channels = run.config.data.channels
        self.kernel = run.config.scoring.smoothing_kernel
        self.threshold = run.threshold if threshold is None else float(threshold)
        self.use_roi = use_roi
        self.tile_size = run.config.scoring.tile_size
        self.tile_stride = run.config.scoring.tile_stride
        self._score = tf.function(self._score_model_inputs, reduce_retracing=True)

    def _score_model_inputs(self, images, roi):
        return scoring.score_model_inputs(self.run.model, images, self.kernel, roi=roi)

    def model_inputs(self, image):
        """Native uint8 [h, w, c] -> float32 [H, W, C] at the model size."""
        return scoring.prepare_images(tf.constant(image[None]), self.image_size,
                                      self.channels)[0]

    def score_batch(self, images, rois):
        """Model-size float images [B, H, W, C] and ROIs [B, H, W] -> numpy outputs."""
        out = self._score(tf.stack(images), tf.stack(rois))
        return {k: v.numpy() for k, v in out.items()}


@dataclasses.dataclass
class Scored:
    """One scored image: `anomaly_map` is the smoothed map at the model resolution."""
    path: str
    image: np.ndarray        # native uint8 [h, w, 3 or 1]
    anomaly_map: np.ndarray  # float32 [H, W]
    anomaly_score: float
    sample: object = None


def iter_scored(scorer, items, batch_size=8, skip_bad_files=False):
    """Streams `Scored` results for samples (`mvtec.Sample`) or paths, in order.

    Memory stays bounded by the batch: nothing is kept after it is yielded.
    """
    full_roi = tf.ones(scorer.image_size, tf.float32)
    batch = []

    def flush():
        images = [b[1] for b in batch]
        rois = [b[2] for b in batch]
        out = scorer.score_batch(images, rois)
        for (item, _, _, native), amap, score in zip(batch, out[keys.ANOMALY_MAP],
                                                     out[keys.ANOMALY_SCORE]):
            path = item.path if isinstance(item, mvtec.Sample) else item
            yield Scored(path=path, image=native, anomaly_map=amap,
                         anomaly_score=float(score),
                         sample=item if isinstance(item, mvtec.Sample) else None)
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
        roi = full_roi
        roi_path = getattr(item, "roi_path", None) if scorer.use_roi else None
        if scorer.tile_size:  # high resolution: one image at a time, map at native size
            out = scoring.score_tiled(
                scorer.run.model, native, scorer.image_size, scorer.channels, scorer.kernel,
                scorer.tile_size, scorer.tile_stride,
                roi=io.read_mask(roi_path, native.shape[:2]) if roi_path else None)
            yield Scored(path=path, image=native, anomaly_map=out[keys.ANOMALY_MAP].numpy(),
                         anomaly_score=float(out[keys.ANOMALY_SCORE]),
                         sample=item if isinstance(item, mvtec.Sample) else None)
            continue
        if roi_path:
            roi = tf.constant(io.read_mask(roi_path, scorer.image_size), tf.float32)
        batch.append((item, scorer.model_inputs(native), roi, native))
        if len(batch) == batch_size:
            yield from flush()
    if batch:
        yield from flush()


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
    samples = mvtec.index_test(data_dir)
    labels, scores, maps, masks, rois, defects, paths, notes = [], [], [], [], [], [], [], []
    missing_gt = 0
    for scored in iter_scored(scorer, samples, batch_size):
        s = scored.sample
        labels.append(s.label)
        scores.append(scored.anomaly_score)
        defects.append(s.defect)
        paths.append(s.path)
        maps.append(scored.anomaly_map)
        size = scored.anomaly_map.shape  # model resolution, or native when tiling
        if s.label == 0:
            masks.append(np.zeros(size, np.uint8))
        elif s.mask_path:
            masks.append(io.read_mask(s.mask_path, size))
        else:
            masks.append(None)
            missing_gt += 1
        rois.append(io.read_mask(s.roi_path, size) if s.roi_path else None)
    if missing_gt:
        notes.append(f"{missing_gt} defect image(s) without ground truth are left out of the "
                     f"pixel metrics")
    have_rois = any(r is not None for r in rois)
    result = metrics_lib.evaluate_all(labels, scores, masks=masks, maps=maps, defects=defects,
                                      threshold=scorer.threshold,
                                      rois=rois if have_rois else None)
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
                  use_roi=scorer.use_roi, threshold=scorer.threshold)
    return SplitScores(metrics=result, paths=paths, scores=scores, samples=samples)
