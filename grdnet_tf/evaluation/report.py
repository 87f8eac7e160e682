"""What a QA engineer reads after grdnet-eval: report.md with the pictures embedded, one
panel per image that matters, and a gallery of the errors at the calibrated threshold.

    <output_dir>/report.md      metrics with a one-line meaning each, the test split's
                                make-up, per-folder rates, the pictures below embedded
    <output_dir>/roc.png        image ROC with the operating point of the threshold
    <output_dir>/gallery.png    rows: false positives per good folder, false negatives per
                                defect type (thumbnails: heatmap scaled around the pixel
                                threshold, ground truth in green, score in the caption)
    <output_dir>/panels/        per image: input + ground truth, reconstruction, heatmap
                                with colour bar, defect mask; score and verdict in the title
                                (every false positive and negative up to `MAX_PANELS` each,
                                and the highest-scoring image of every test folder)
"""
import os
import shutil
import tempfile

import numpy as np

from grdnet_tf import file_modes, run_scoring
from grdnet_tf.data import io, preprocess
from grdnet_tf.evaluation import plots

MAX_PANELS = 12          # panels per error kind (false positives, false negatives)
GALLERY_PER_ROW = 6

# One line per metric, written next to its value in report.md.
METRIC_HELP = {
    "image_auroc": "probability that a random defective image scores above a random good "
                   "one (0.5 = chance); independent of the threshold",
    "pixel_auroc": "the same over pixels: defect pixels against good pixels (raw map)",
    "aupro": "area under the per-region overlap curve up to 30% false-positive pixels, "
             "normalised: small defects count as much as large ones",
    "pixel_auroc_smoothed": "pixel AUROC of the smoothed map the image score comes from",
    "aupro_smoothed": "AUPRO of the smoothed map",
    "image_f1_max": "best F1 over all thresholds, chosen on the test split itself: an "
                    "optimistic ceiling, not the F1 at the calibrated threshold",
    "pixel_f1_max": "best pixel F1 over all thresholds (test split; optimistic)",
    "pixel_auroc_roi": "pixel AUROC inside the regions of interest only",
    "aupro_roi": "AUPRO inside the regions of interest only",
    "pixel_auroc_roi_smoothed": "pixel AUROC inside the ROI on the smoothed map",
    "false_alarm_rate": "share of good images flagged at the calibrated threshold",
    "tpr": "share of defective images flagged at the calibrated threshold (recall)",
    "precision": "share of flagged images that are defective",
    "accuracy": "share of images classified correctly at the calibrated threshold",
    "f1": "F1 at the calibrated threshold (what the line will see)",
}


def fmt(value, digits=4):
    """A metric for a report: 'n/a' for None, else `digits` decimals."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def _name(path):
    parts = os.path.normpath(path).split(os.sep)
    return "_".join(parts[-2:]).rsplit(".", 1)[0]


def errors(labels, scores, threshold):
    """(false positive indices, false negative indices) at `threshold`, most confident
    errors first (highest-scoring good images, lowest-scoring defective ones)."""
    labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
    flagged = scores > threshold
    fp = np.flatnonzero((labels == 0) & flagged)
    fn = np.flatnonzero((labels == 1) & ~flagged)
    return fp[np.argsort(-scores[fp], kind="stable")], fn[np.argsort(scores[fn], kind="stable")]


def threshold_scaled(anomaly_map, pixel_threshold):
    """Map values rescaled so the pixel threshold lands at 0.5 (the middle of the jet
    table), piecewise linear: thumbnails then read 'above threshold' the same everywhere."""
    a = np.clip(np.asarray(anomaly_map, np.float32), 0.0, 1.0)
    t = min(max(float(pixel_threshold), 1e-3), 1.0 - 1e-3)
    return np.where(a <= t, 0.5 * a / t, 0.5 + 0.5 * (a - t) / (1.0 - t))


class _Native:
    """One scored image at its native resolution: map, reconstruction, mask, ground truth."""

    def __init__(self, scored, decision):
        from grdnet_tf.evaluation import eval_lib

        self.scored = scored
        shape = scored.image.shape
        self.map = eval_lib.native_map(scored.anomaly_map, shape)
        rec = preprocess.resize(np.asarray(scored.reconstruction, np.float32)[None],
                                tuple(int(s) for s in shape[:2]))
        self.reconstruction = np.clip(rec[0].numpy(), 0.0, 1.0)
        self.mask = decision.mask(self.map).numpy()
        sample = scored.sample
        self.gt = (io.read_mask(sample.mask_path, shape[:2])
                   if sample is not None and sample.label and sample.mask_path else None)

    def thumbnail(self, pixel_threshold):
        return plots.overlay(self.scored.image, threshold_scaled(self.map, pixel_threshold),
                             self.gt)



def _write_panels(panel_dir, chosen, native, samples, scores, decision):
    """Writes one panel PNG per chosen image into panel_dir; returns their paths relative to
    the evaluation folder (panels/<kind>_<folder>_<stem>.png), by kind, then falling score."""
    panels = []
    for i, kind in sorted(chosen.items(), key=lambda kv: (kv[1], -scores[kv[0]])):
        n = native[i]
        sample = samples[i]
        name = f"{kind}_{_name(sample.path)}.png"   # _name: <folder>_<stem>
        title = plots.verdict_title(_name(sample.path), scores[i], decision.threshold,
                                    truth=sample.defect)
        plots.panel_png(os.path.join(panel_dir, name), n.scored.image, n.reconstruction,
                        n.map, n.mask, decision.pixel_threshold, title, gt_mask=n.gt)
        panels.append(os.path.join("panels", name))
    return panels


def write_pictures(output_dir, scorer, samples, scores, batch_size=8):
    """Panels, gallery and the annotated ROC of a scored test split (see module docstring).

    Returns {"panels": [relative paths], "gallery": "gallery.png" or None, counts}.
    """
    labels = [s.label for s in samples]
    defects = [s.defect for s in samples]
    plots.roc_curve_png(labels, scores, os.path.join(output_dir, "roc.png"),
                        title="image ROC", threshold=scorer.threshold)
    if scorer.decision is None:
        return {"panels": [], "gallery": None, "false_positives": None,
                "false_negatives": None}
    decision = scorer.decision
    fp, fn = errors(labels, scores, decision.threshold)
    top = [max((i for i, d in enumerate(defects) if d == folder), key=lambda i: scores[i])
           for folder in sorted(set(defects))]
    chosen = {}
    for kind, indices in (("fp", fp[:MAX_PANELS]), ("fn", fn[:MAX_PANELS]), ("top", top)):
        for i in indices:
            chosen.setdefault(int(i), kind)
    gallery = {}   # folder -> (label, number of errors, the first GALLERY_PER_ROW errors)
    for folder in sorted(set(defects)):
        label = labels[defects.index(folder)]
        wrong = [int(i) for i in (fp if label == 0 else fn) if defects[i] == folder]
        gallery[folder] = (label, len(wrong), wrong[:GALLERY_PER_ROW])
    wanted = sorted(set(chosen).union(*(shown for _, _, shown in gallery.values())))
    native = {}
    items = [samples[i] for i in wanted]
    for i, scored in zip(wanted, run_scoring.iter_scored(scorer, items, batch_size)):
        native[i] = _Native(scored, decision)
    # Written aside, then in place of panels/: an earlier evaluation's other errors go.
    panel_dir = tempfile.mkdtemp(prefix=".panels.tmp-", dir=output_dir)
    try:
        panels = _write_panels(panel_dir, chosen, native, samples, scores, decision)
        file_modes.replace_dir(panel_dir, os.path.join(output_dir, "panels"))
    finally:
        shutil.rmtree(panel_dir, ignore_errors=True)
    rows = []
    for folder, (label, count, shown) in gallery.items():
        kind = "false positives" if label == 0 else "false negatives"
        rows.append((f"{folder}\n{kind} ({count})",
                     [(native[i].thumbnail(decision.pixel_threshold),
                       f"{_name(samples[i].path)}\n{scores[i]:.3f}") for i in shown]))
    plots.gallery_png(os.path.join(output_dir, "gallery.png"), rows,
                      title=f"errors at threshold {decision.threshold:.4f} (heatmap: pixel "
                            f"threshold {decision.pixel_threshold:.3f} = middle colour; "
                            f"green: ground truth)", per_row=GALLERY_PER_ROW)
    return {"panels": panels, "gallery": "gallery.png", "false_positives": int(len(fp)),
            "false_negatives": int(len(fn))}


def write_report(path, metrics, model_dir, data_dir, checkpoint, pictures=None):
    """report.md: settings, the metrics with their meaning, per-folder rates, pictures."""
    pictures = pictures or {}
    labels_total = metrics.get("num_images") or 0
    defective = sum(info["count"] for info in metrics["folders"].values() if info["label"])
    share = defective / labels_total if labels_total else 0.0
    lines = [
        "# GRD-Net evaluation", "",
        f"- run: `{model_dir}` (checkpoint `{checkpoint}`)",
        f"- data: `{data_dir}`: {labels_total} test images, {defective} defective "
        f"({100 * share:.0f}%)",
        f"- threshold: {fmt(metrics.get('threshold'))}"
        + (f" (quantile {metrics['threshold_quantile']} of {metrics['threshold_normals']} "
           f"validation normals)" if metrics.get("threshold_normals") else
           f" ({metrics.get('threshold_source', 'given')})"),
        f"- pixel threshold of the defect masks: {fmt(metrics.get('pixel_threshold'))} "
        f"({metrics.get('pixel_threshold_source', 'n/a')})",
        f"- smoothing window: {metrics.get('smoothing_kernel')} (image score = max of the "
        f"smoothed {metrics.get('image_map', 'segmentator')} map"
        + (", standardised per place by the training normals' mean and std (image "
           "baseline): the score is in standard deviations" if metrics.get("image_baseline")
           else "")
        + f"); pixel metrics on the raw {metrics.get('pixel_map', 'segmentator')} map, "
        f"`_smoothed` on the smoothed map", "",
        "| metric | value | meaning |", "|---|---|---|",
    ]
    for key, meaning in METRIC_HELP.items():
        if key in metrics:
            lines.append(f"| {key} | {fmt(metrics[key])} | {meaning} |")
    if labels_total and 0 < share < 1:
        lines += ["", f"Context: {100 * share:.0f}% of the test images are defective, so "
                      f"flagging every image already gives F1 = {2 * share / (1 + share):.3f} "
                      f"and accuracy = {share:.3f}; AUROC does not depend on that mix."]
    lines += ["", "| test folder | images | image AUROC vs good | flagged at threshold |",
              "|---|---|---|---|"]
    for folder, info in sorted(metrics["folders"].items()):
        lines.append(f"| {folder} | {info['count']} | "
                     f"{fmt(metrics['per_defect_image_auroc'].get(folder))} | "
                     f"{fmt(info.get('flagged_rate'), 3)} |")
    for note in metrics.get("notes", []):
        lines.append(f"\nNote: {note}")
    lines += ["", "## Pictures", "", "![image ROC with the operating point](roc.png)", "",
              "![score histogram with the threshold](histogram.png)", ""]
    if pictures.get("gallery"):
        lines += [f"Errors at the threshold: {pictures['false_positives']} false positive(s), "
                  f"{pictures['false_negatives']} false negative(s).", "",
                  f"![errors at the threshold]({pictures['gallery']})", ""]
    if pictures.get("panels"):
        lines += ["Panels (input + ground truth, reconstruction, heatmap, defect mask):", ""]
        lines += [f"![{os.path.basename(p)}]({p})" for p in pictures["panels"]]
        lines.append("")
    lines += ["Overlays of the most and least anomalous images: `overlays/`.", ""]
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    os.replace(tmp, path)
