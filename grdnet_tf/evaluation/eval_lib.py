"""Evaluation and prediction of a trained run, through the one scoring module.

Images are read at their native size and go through `scoring.prepare_images` (the same
resize the SavedModel does), so evaluated scores equal exported scores. Pixel metrics are
computed at the model resolution (`data.image_size`); ground truth and test ROIs are resized
there with nearest neighbour. Overlays are drawn at the image's native resolution.
With `scoring.tile_size` > 0, each image is scored by tiles at its native resolution
(`scoring.score_tiled`) and pixel metrics use the native resolution.
"""
import csv
import dataclasses
import glob
import os

import numpy as np
import tensorflow as tf
from absl import logging

from grdnet_tf import keys, run_dir, scoring
from grdnet_tf.data import io, mvtec
from grdnet_tf.evaluation import metrics as metrics_lib
from grdnet_tf.evaluation import plots


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
            amap, score = scoring.score_tiled(
                scorer.run.model, native, scorer.image_size, scorer.channels, scorer.kernel,
                scorer.tile_size, scorer.tile_stride,
                roi=io.read_mask(roi_path, native.shape[:2]) if roi_path else None)
            yield Scored(path=path, image=native, anomaly_map=amap.numpy(),
                         anomaly_score=float(score),
                         sample=item if isinstance(item, mvtec.Sample) else None)
            continue
        if roi_path:
            roi = tf.constant(io.read_mask(roi_path, scorer.image_size), tf.float32)
        batch.append((item, scorer.model_inputs(native), roi, native))
        if len(batch) == batch_size:
            yield from flush()
    if batch:
        yield from flush()


def native_map(anomaly_map, shape):
    """Model-resolution map -> the native (h, w), bilinear (as the SavedModel does)."""
    resized = tf.image.resize(anomaly_map[None, ..., None], shape[:2], method="bilinear")
    return np.clip(resized[0, ..., 0].numpy(), 0.0, 1.0)


def _overlay(scored, gt_mask_path=None):
    shape = scored.image.shape
    amap = native_map(scored.anomaly_map, shape)
    gt = io.read_mask(gt_mask_path, shape[:2]) if gt_mask_path else None
    return plots.overlay(scored.image, amap, gt)


def _safe_name(path):
    parts = os.path.normpath(path).split(os.sep)
    return "_".join(parts[-2:]).rsplit(".", 1)[0] + ".png"


def _fmt(value, digits=4):
    return "n/a" if value is None else f"{value:.{digits}f}"


def write_report(path, metrics, model_dir, data_dir, checkpoint):
    lines = [
        "# GRD-Net evaluation", "",
        f"- run: `{model_dir}` (checkpoint `{checkpoint}`)",
        f"- data: `{data_dir}`", f"- threshold: {_fmt(metrics.get('threshold'))}", "",
        "| metric | value |", "|---|---|",
    ]
    for key in ("image_auroc", "pixel_auroc", "aupro", "image_f1_max", "pixel_f1_max",
                "pixel_auroc_roi", "aupro_roi", "false_alarm_rate", "tpr", "precision",
                "accuracy"):
        if key in metrics:
            lines.append(f"| {key} | {_fmt(metrics[key])} |")
    lines += ["", "| test folder | images | image AUROC vs good | flagged at threshold |",
              "|---|---|---|---|"]
    for folder, info in sorted(metrics["folders"].items()):
        lines.append(f"| {folder} | {info['count']} | "
                     f"{_fmt(metrics['per_defect_image_auroc'].get(folder))} | "
                     f"{_fmt(info.get('flagged_rate'), 3)} |")
    for note in metrics.get("notes", []):
        lines.append(f"\nNote: {note}")
    lines += ["", "Plots: `roc.png`, `histogram.png`; overlays in `overlays/`.", ""]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    os.replace(tmp, path)


def score_test_split(scorer, data_dir, batch_size=8):
    """Scores every test image of `data_dir` and computes all metrics (no files written).

    Returns (metrics dict, test paths, scores, samples). Pixel metrics use the model
    resolution; images whose ground truth is missing are left out of them (noted).
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
    return result, paths, scores, samples


def evaluate(model_dir, data_dir, output_dir, checkpoint="best", threshold=None,
             batch_size=8, num_overlays=4, use_roi=False, log_fn=logging.info):
    """Scores the test split of `data_dir` and writes metrics, report, plots and overlays.

    Returns the metrics dict (also written to `output_dir/metrics.json`).
    """
    run = run_dir.load_for_inference(model_dir, checkpoint)
    scorer = Scorer(run, threshold=threshold, use_roi=use_roi)
    result, paths, scores, samples = score_test_split(scorer, data_dir, batch_size)
    labels = [s.label for s in samples]
    defects = [s.defect for s in samples]
    result.update(checkpoint=run.checkpoint_path, model_dir=model_dir,
                  threshold_source="flag" if threshold is not None else "calibration")

    os.makedirs(output_dir, exist_ok=True)
    run_dir.write_json(os.path.join(output_dir, "metrics.json"), result)
    _write_scores_csv(os.path.join(output_dir, "scores.csv"), paths, defects, labels, scores,
                      scorer.threshold)
    plots.roc_curve_png(labels, scores, os.path.join(output_dir, "roc.png"),
                        title=f"image ROC (AUROC {_fmt(result['image_auroc'], 3)})")
    plots.score_histogram_png(labels, scores, scorer.threshold,
                              os.path.join(output_dir, "histogram.png"),
                              title="image scores")
    _write_overlays(output_dir, samples_by_path={s.path: s for s in samples}, scorer=scorer,
                    paths=paths, scores=scores, count=num_overlays)
    write_report(os.path.join(output_dir, "report.md"), result, model_dir, data_dir,
                 run.checkpoint_path)
    log_fn(f"image AUROC {_fmt(result['image_auroc'])}, pixel AUROC "
           f"{_fmt(result['pixel_auroc'])}, AUPRO {_fmt(result['aupro'])}; "
           f"report {os.path.join(output_dir, 'report.md')}")
    return result


def _write_scores_csv(path, paths, defects, labels, scores, threshold):
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "defect", "label", "score", "is_anomalous"])
        for p, d, l, s in zip(paths, defects, labels, scores):
            flagged = "" if threshold is None else int(s > threshold)
            writer.writerow([p, d, l, f"{s:.6f}", flagged])
    os.replace(tmp, path)


def _write_overlays(output_dir, samples_by_path, scorer, paths, scores, count):
    """Overlays of the `count` most and least anomalous test images."""
    overlay_dir = os.path.join(output_dir, "overlays")
    os.makedirs(overlay_dir, exist_ok=True)
    order = np.argsort(np.asarray(scores))
    chosen = [("most", i) for i in order[::-1][:count]] + [("least", i) for i in order[:count]]
    items = [samples_by_path[paths[i]] for _, i in chosen]
    for (kind, i), scored in zip(chosen, iter_scored(scorer, items, batch_size=len(items))):
        sample = scored.sample
        image = _overlay(scored, sample.mask_path if sample.label else None)
        plots.save_png(os.path.join(overlay_dir, f"{kind}_{scores[i]:.4f}_"
                                                 f"{_safe_name(sample.path)}"), image)


def expand_inputs(pattern):
    """A file, a folder (its images, recursively) or a glob -> sorted image paths."""
    if os.path.isdir(pattern):
        paths = [os.path.join(root, n) for root, _, names in os.walk(pattern) for n in names
                 if io.is_image_file(n)]
    elif os.path.isfile(pattern):
        paths = [pattern]
    else:
        paths = [p for p in glob.glob(pattern, recursive=True)
                 if os.path.isfile(p) and io.is_image_file(p)]
    if not paths:
        raise FileNotFoundError(f"--input={pattern}: no image files found "
                                f"({', '.join(io.IMAGE_EXTENSIONS)})")
    return sorted(paths)


def predict(model_dir, inputs, output_dir, checkpoint="best", threshold=None, batch_size=8,
            overlays=True, skip_bad_files=False, log_fn=logging.info):
    """Scores images and streams `predictions.csv` (path, score, is_anomalous) + overlays.

    The CSV is written to a temporary file and renamed at the end, so an interrupted run
    never leaves a half-written predictions.csv.
    """
    run = run_dir.load_for_inference(model_dir, checkpoint)
    scorer = Scorer(run, threshold=threshold)
    if scorer.threshold is None:
        raise ValueError(f"{model_dir} has no calibrated threshold (calibration.json): pass "
                         f"--threshold")
    paths = expand_inputs(inputs)
    os.makedirs(output_dir, exist_ok=True)
    overlay_dir = os.path.join(output_dir, "heatmaps")
    if overlays:
        os.makedirs(overlay_dir, exist_ok=True)
    csv_path = os.path.join(output_dir, "predictions.csv")
    tmp = csv_path + ".tmp"
    count = flagged = 0
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "score", "is_anomalous"])
        for scored in iter_scored(scorer, paths, batch_size, skip_bad_files=skip_bad_files):
            is_anomalous = scored.anomaly_score > scorer.threshold
            writer.writerow([scored.path, f"{scored.anomaly_score:.6f}", int(is_anomalous)])
            count += 1
            flagged += int(is_anomalous)
            if overlays:
                plots.save_png(os.path.join(overlay_dir, _safe_name(scored.path)),
                               _overlay(scored))
    os.replace(tmp, csv_path)
    log_fn(f"scored {count} image(s), {flagged} anomalous at threshold "
           f"{scorer.threshold:.4f}: {csv_path}")
    return {"predictions_csv": csv_path, "count": count, "flagged": flagged,
            "threshold": scorer.threshold}


def headline(result, output_dir):
    """One line with the numbers an inspection engineer looks at first."""
    return (f"image AUROC {_fmt(result['image_auroc'])} | pixel AUROC "
            f"{_fmt(result['pixel_auroc'])} | AUPRO {_fmt(result['aupro'])} | image F1-max "
            f"{_fmt(result['image_f1_max'])} | threshold {_fmt(result.get('threshold'))} | "
            f"false alarms {_fmt(result.get('false_alarm_rate'), 3)} -> "
            f"{os.path.join(output_dir, 'metrics.json')}")
