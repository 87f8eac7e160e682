"""Evaluation and prediction of a trained run: metrics, report, plots, overlays, CSVs.

The QA report (report.md, panels, error gallery, annotated ROC) is
`grdnet_tf.evaluation.report`.

Scoring (native-size images through the one scoring module, tiling, the metrics of a test
split) is `grdnet_tf.run_scoring`; overlays are drawn at the image's native resolution.
"""
import csv
import glob
import os
import shutil
import tempfile

import numpy as np
from absl import logging

from grdnet_tf import file_modes, progress, run_dir, run_scoring
from grdnet_tf.data import io, mvtec, preprocess
from grdnet_tf.evaluation import plots, report


def native_map(anomaly_map, shape):
    """Model-resolution map -> the native (h, w) with `preprocess.resize`, as
    `scoring.score_images` (the SavedModel) resizes its output map."""
    resized = preprocess.resize(np.asarray(anomaly_map, np.float32)[None, ..., None],
                                tuple(int(s) for s in shape[:2]))
    return np.clip(resized[0, ..., 0].numpy(), 0.0, 1.0)


def _overlay(scored, gt_mask_path=None):
    shape = scored.image.shape
    amap = native_map(scored.anomaly_map, shape)
    gt = io.read_mask(gt_mask_path, shape[:2]) if gt_mask_path else None
    return plots.overlay(scored.image, amap, gt)


def _native_roi(scored):
    """The ROI scoring read (`Scored.roi`) at its image's size (nearest neighbour): the
    file is not read again."""
    return io.resize_mask(scored.roi, scored.image.shape[:2])


def _safe_name(path):
    parts = os.path.normpath(path).split(os.sep)
    return "_".join(parts[-2:]).rsplit(".", 1)[0] + ".png"


_fmt = report.fmt


def evaluate(model_dir, data_dir, output_dir, checkpoint="best", threshold=None,
             batch_size=8, num_overlays=4, use_roi=False, log_fn=logging.info):
    """Scores the test split of `data_dir` and writes metrics, report, plots and overlays.

    Returns the metrics dict (also written to `output_dir/metrics.json`).
    """
    run = run_dir.load_for_inference(model_dir, checkpoint)
    scorer = run_scoring.Scorer(run, threshold=threshold, use_roi=use_roi)
    split = run_scoring.score_test_split(scorer, data_dir, batch_size)
    result, paths, scores, samples = split.metrics, split.paths, split.scores, split.samples
    labels = [s.label for s in samples]
    defects = [s.defect for s in samples]
    result.update(checkpoint=run.checkpoint_path, model_dir=model_dir,
                  threshold_source="flag" if threshold is not None else "calibration")
    if threshold is None and run.calibration:
        result.update(threshold_normals=run.calibration.get("num_images"),
                      threshold_quantile=run.calibration.get("quantile"))
        if run.calibration.get("warning"):
            result["notes"].append(run.calibration["warning"])

    if scorer.decision is not None:
        result.update(pixel_threshold=scorer.decision.pixel_threshold,
                      pixel_threshold_source=(run.calibration or {}).get(
                          "pixel_threshold_source", "default"))

    os.makedirs(output_dir, exist_ok=True)
    run_dir.write_json(os.path.join(output_dir, "metrics.json"), result)
    _write_scores_csv(os.path.join(output_dir, "scores.csv"), paths, defects, labels, scores,
                      scorer.threshold)
    pictures = report.write_pictures(output_dir, scorer, samples, scores, batch_size)
    plots.score_histogram_png(labels, scores, scorer.threshold,
                              os.path.join(output_dir, "histogram.png"),
                              title="image scores")
    _write_overlays(output_dir, samples_by_path={s.path: s for s in samples}, scorer=scorer,
                    paths=paths, scores=scores, count=num_overlays)
    report.write_report(os.path.join(output_dir, "report.md"), result, model_dir, data_dir,
                        run.checkpoint_path, pictures)
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
    """Overlays of the `count` most and least anomalous test images; they replace the
    overlays/ folder of an earlier evaluation (whose file names hold other scores)."""
    staging = tempfile.mkdtemp(prefix=".overlays.tmp-", dir=output_dir)
    order = np.argsort(np.asarray(scores))
    chosen = [("most", i) for i in order[::-1][:count]] + [("least", i) for i in order[:count]]
    items = [samples_by_path[paths[i]] for _, i in chosen]
    try:
        scored_items = run_scoring.iter_scored(scorer, items, batch_size=max(1, len(items)))
        for (kind, i), scored in zip(chosen, scored_items):
            sample = scored.sample
            image = _overlay(scored, sample.mask_path if sample.label else None)
            plots.save_png(os.path.join(staging, f"{kind}_{scores[i]:.4f}_"
                                                 f"{_safe_name(sample.path)}"), image)
        file_modes.replace_dir(staging, os.path.join(output_dir, "overlays"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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


def heatmap_names(paths):
    """{input path: heatmap file name relative to heatmaps/}: the path relative to the
    inputs' common folder, extension kept, plus ".png" (``a/x/img.png`` ->
    ``a/x/img.png.png``), so ``a/x/img.png`` and ``b/x/img.png``, or ``ok.png`` and
    ``ok.JPG``, never share a heatmap; names equal but for case get ``~2``, ``~3``."""
    absolute = [os.path.abspath(p) for p in paths]
    root = os.path.commonpath([os.path.dirname(p) for p in absolute])
    names, taken = {}, set()
    for path, full in zip(paths, absolute):
        stem, copy = os.path.relpath(full, root), 1
        name = stem + ".png"
        while name.casefold() in taken:
            copy += 1
            name = f"{stem}~{copy}.png"
        taken.add(name.casefold())
        names[path] = name
    return names


def predict(model_dir, inputs, output_dir, checkpoint="best", threshold=None, batch_size=8,
            overlays=True, skip_bad_files=False, roi=None, log_fn=logging.info):
    """Scores images and streams `predictions.csv` (path, score, is_anomalous,
    normalized_score, heatmap) + one heatmap overlay per image in `heatmaps/` (names:
    `heatmap_names`) + its defect mask in `masks/` (same name; PNG 0/255 at the image's size:
    map > the calibrated pixel threshold, as the SavedModel's anomaly_mask).

    `roi`: one ROI mask for every image (a fixed camera's template) or a folder of masks
    by image stem (`mvtec.samples_with_roi`); the maps are zero outside it before the image
    score (as `grdnet-eval --use_roi`), so defects off the part never flag an image; the
    heatmaps outline it in white. The threshold stays the calibrated one (calibration
    scores whole validation images).

    The CSV and the heatmaps are written into temporaries that replace predictions.csv
    and heatmaps/ only at the end: an interrupted or failed run leaves the previous results
    as they were and no temporaries, and a finished one no heatmaps of earlier inputs.
    """
    run = run_dir.load_for_inference(model_dir, checkpoint)
    scorer = run_scoring.Scorer(run, threshold=threshold, use_roi=bool(roi))
    if scorer.threshold is None:
        raise ValueError(f"{model_dir} has no calibrated threshold (calibration.json): pass "
                         f"--threshold")
    paths = expand_inputs(inputs)
    items = mvtec.samples_with_roi(paths, roi)
    names = heatmap_names(paths)
    os.makedirs(output_dir, exist_ok=True)
    overlay_dir = os.path.join(output_dir, "heatmaps")
    staging = tempfile.mkdtemp(prefix=".heatmaps.tmp-", dir=output_dir) if overlays else None
    mask_staging = (tempfile.mkdtemp(prefix=".masks.tmp-", dir=output_dir) if overlays
                    else None)
    csv_path = os.path.join(output_dir, "predictions.csv")
    tmp = csv_path + ".tmp"
    count = flagged = 0
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "score", "is_anomalous", "normalized_score"]
                            + (["heatmap"] if overlays else []))
            for scored in progress.counted(
                    run_scoring.iter_scored(scorer, items, batch_size,
                                            skip_bad_files=skip_bad_files),
                    len(paths), "scoring images", log_fn):
                is_anomalous = scored.anomaly_score > scorer.threshold
                normalized = float(scorer.decision.normalize(scored.anomaly_score))
                row = [scored.path, f"{scored.anomaly_score:.6f}", int(is_anomalous),
                       f"{normalized:.6f}"]
                if overlays:
                    name = names[scored.path]
                    for folder in (staging, mask_staging):
                        os.makedirs(os.path.dirname(os.path.join(folder, name)),
                                    exist_ok=True)
                    picture = _overlay(scored)
                    if roi:
                        plots.draw_outline(picture, _native_roi(scored),
                                           plots.ROI_CONTOUR_RGB, "ROI")
                    plots.save_png(os.path.join(staging, name), picture)
                    native = native_map(scored.anomaly_map, scored.image.shape)
                    plots.save_png(os.path.join(mask_staging, name),
                                   scorer.decision.mask(native).numpy() * np.uint8(255))
                    row.append(os.path.join("heatmaps", name))
                writer.writerow(row)
                count += 1
                flagged += int(is_anomalous)
        if overlays:
            file_modes.replace_dir(staging, overlay_dir)
            file_modes.replace_dir(mask_staging, os.path.join(output_dir, "masks"))
        os.replace(tmp, csv_path)
    finally:
        for leftover in (tmp, staging, mask_staging):
            if leftover and os.path.isdir(leftover):
                shutil.rmtree(leftover, ignore_errors=True)
            elif leftover and os.path.exists(leftover):
                os.remove(leftover)
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
