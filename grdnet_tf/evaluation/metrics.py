"""Evaluation metrics for anomaly detection (docs/method.md §5), in numpy / scikit-learn / scipy.

Image level: AUROC, F1-max, false-alarm and detection rates at a threshold.
Pixel level: AUROC, F1-max and AUPRO (Bergmann et al., "The MVTec Anomaly Detection
Dataset", IJCV 2021), optionally restricted to a region of interest.

Conventions shared by every function:
  * labels are 0 (good) / 1 (anomalous); scores and maps: higher = more anomalous.
  * A sample is predicted anomalous when ``score > threshold`` (the rule of the
    scoring module and of ``false_alarm_rate``); thresholds returned here follow it.
  * A metric that is undefined for the data (one class only, no pixels, ...) is
    ``None`` and an absl warning says why; nothing raises on such data.
  * Non-finite scores raise ``ValueError``: they are a model bug, not a data case.
  * Returned numbers are Python floats so results are JSON-serialisable.

Pixel inputs (``masks``, ``maps``, ``roi``) are ``[N, H, W]`` arrays (a trailing
channel of size 1 is dropped) or sequences of per-image ``[H, W]`` arrays, which
may differ in size between images. In ``evaluate_all`` a ``None`` mask entry marks
an image without ground truth, left out of the pixel metrics.

No TensorFlow here: this module must import fast.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from absl import logging
from scipy import ndimage
from sklearn import metrics as skm

# 8-connectivity for ground-truth regions (MVTec AD evaluation).
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


# --------------------------------------------------------------------------- helpers
def _as_labels(labels) -> np.ndarray:
    y = np.asarray(labels).reshape(-1)
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError(f"labels must be 0/1, got values {np.unique(y)[:10]}")
    return y.astype(np.int8)


def _as_scores(scores, name="scores") -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.isfinite(s).all():
        raise ValueError(f"{name} contain {int((~np.isfinite(s)).sum())} non-finite values")
    return s


def _labels_and_scores(labels, scores):
    y, s = _as_labels(labels), _as_scores(scores)
    if y.shape != s.shape:
        raise ValueError(f"labels ({y.size}) and scores ({s.size}) differ in length")
    return y, s


def _two_classes(y: np.ndarray, what: str) -> bool:
    """True when both classes are present; otherwise warns that `what` is undefined."""
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos and n_neg:
        return True
    logging.warning("%s is undefined: %d anomalous and %d normal samples "
                    "(both classes are needed); reporting None.", what, n_pos, n_neg)
    return False


def _image_list(arrays, name: str) -> list:
    """[N, H, W] array, [N, H, W, 1] array or sequence of [H, W] arrays -> list of 2-D."""
    if arrays is None:
        return []
    if isinstance(arrays, np.ndarray):
        if arrays.ndim == 4 and arrays.shape[-1] == 1:
            arrays = arrays[..., 0]
        if arrays.ndim != 3:
            raise ValueError(f"{name} must be [N, H, W], got shape {arrays.shape}")
        return list(arrays)
    out = []
    for a in arrays:
        if a is None:
            out.append(None)
            continue
        a = np.asarray(a)
        if a.ndim == 3 and a.shape[-1] == 1:
            a = a[..., 0]
        if a.ndim != 2:
            raise ValueError(f"each {name} entry must be [H, W], got shape {a.shape}")
        out.append(a)
    return out


def _pixel_arrays(masks, maps, roi=None):
    """Per-image (mask bool, map float32, roi bool) lists after shape checks."""
    mask_l, map_l = _image_list(masks, "masks"), _image_list(maps, "maps")
    roi_l = _image_list(roi, "roi") if roi is not None else [None] * len(mask_l)
    if not len(mask_l) == len(map_l) == len(roi_l):
        raise ValueError(f"masks ({len(mask_l)}), maps ({len(map_l)}) and roi "
                         f"({len(roi_l)}) differ in number of images")
    out_m, out_a, out_r = [], [], []
    for i, (m, a, r) in enumerate(zip(mask_l, map_l, roi_l)):
        if m is None or a is None:
            raise ValueError(f"image {i}: mask and map are required here")
        if m.shape != a.shape or (r is not None and r.shape != m.shape):
            raise ValueError(f"image {i}: mask {m.shape}, map {a.shape} and roi "
                             f"{None if r is None else r.shape} must have one shape")
        out_m.append(m > 0.5)
        out_a.append(np.asarray(a, dtype=np.float32))
        out_r.append(np.ones(m.shape, bool) if r is None else r > 0.5)
    return out_m, out_a, out_r


def _flat_pixels(masks, maps, roi=None):
    """Concatenated (labels uint8, scores float32) of the pixels inside the ROI."""
    ms, As, rs = _pixel_arrays(masks, maps, roi)
    if not ms:
        return np.zeros(0, np.uint8), np.zeros(0, np.float32)
    y = np.concatenate([m[r] for m, r in zip(ms, rs)]).astype(np.uint8)
    s = np.concatenate([a[r] for a, r in zip(As, rs)])
    if not np.isfinite(s).all():
        raise ValueError("maps contain non-finite values")
    return y, s


def _best_f1(y, s):
    """(best F1, threshold for the `score > threshold` rule) or (None, None)."""
    if not y.any():
        logging.warning("F1-max is undefined: no anomalous samples; reporting None.")
        return None, None
    precision, recall, thresholds = skm.precision_recall_curve(y, s)
    # The last (precision=1, recall=0) point has no threshold.
    precision, recall = precision[:-1], recall[:-1]
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    t_hi = float(thresholds[best])           # sklearn: positive iff score >= t_hi
    lower = s[s < t_hi]
    if lower.size == 0:                      # every sample predicted positive
        return float(f1[best]), float(np.nextafter(t_hi, -np.inf))
    t_lo = float(lower.max())
    mid = 0.5 * t_lo + 0.5 * t_hi            # score > mid  <=>  score >= t_hi
    return float(f1[best]), (mid if t_lo <= mid < t_hi else t_lo)


# --------------------------------------------------------------------------- image level
def image_auroc(labels, scores) -> Optional[float]:
    """Area under the image-level ROC curve (ties count one half).

    Args:
      labels: [N] 0 good / 1 anomalous.
      scores: [N] image anomaly scores.
    Returns:
      AUROC in [0, 1], or None when only one class is present.
    """
    y, s = _labels_and_scores(labels, scores)
    if not _two_classes(y, "Image AUROC"):
        return None
    return float(skm.roc_auc_score(y, s))


def f1_max(labels, scores) -> tuple[Optional[float], Optional[float]]:
    """Best F1 over all thresholds (from sklearn precision_recall_curve).

    Returns:
      (f1, threshold): predicting ``score > threshold`` achieves ``f1``. The
      threshold lies halfway between the lowest score predicted anomalous and the
      next lower score. (None, None) when there are no anomalous samples.
    """
    y, s = _labels_and_scores(labels, scores)
    return _best_f1(y, s)


def false_alarm_rate(labels, scores, threshold) -> Optional[float]:
    """Fraction of good (label 0) samples with ``score > threshold``; None if none are good."""
    y, s = _labels_and_scores(labels, scores)
    normal = s[y == 0]
    if normal.size == 0:
        logging.warning("False-alarm rate is undefined: no normal samples; reporting None.")
        return None
    return float(np.mean(normal > float(threshold)))


def detection_rates(labels, scores, threshold) -> dict:
    """Confusion-matrix rates for the decision ``score > threshold``.

    Returns:
      dict with tpr, fpr, precision, recall (= tpr), accuracy and f1. A rate whose
      denominator is zero (e.g. precision with nothing predicted anomalous) is None.
    """
    y, s = _labels_and_scores(labels, scores)
    pred = s > float(threshold)
    pos = y == 1
    tp = int(np.sum(pred & pos))
    fp = int(np.sum(pred & ~pos))
    fn = int(np.sum(~pred & pos))
    tn = int(np.sum(~pred & ~pos))

    def ratio(num, den):
        return float(num / den) if den else None

    tpr = ratio(tp, tp + fn)
    return {
        "tpr": tpr,
        "fpr": ratio(fp, fp + tn),
        "precision": ratio(tp, tp + fp),
        "recall": tpr,
        "accuracy": ratio(tp + tn, y.size),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
    }


# --------------------------------------------------------------------------- pixel level
def pixel_auroc(masks, maps, roi=None) -> Optional[float]:
    """Area under the pixel-level ROC curve over all pixels of all images.

    Args:
      masks: [N, H, W] ground truth in {0, 1}.
      maps: [N, H, W] anomaly maps.
      roi: optional [N, H, W] in {0, 1}; only pixels inside the ROI count.
    Returns:
      AUROC, or None when the counted pixels hold only one class.
    """
    y, s = _flat_pixels(masks, maps, roi)
    if not _two_classes(y, "Pixel AUROC"):
        return None
    return float(skm.roc_auc_score(y, s))


def pixel_f1_max(masks, maps, roi=None) -> tuple[Optional[float], Optional[float]]:
    """F1-max over pixels (see ``f1_max``)."""
    y, s = _flat_pixels(masks, maps, roi)
    return _best_f1(y, s)


def pro_curve(masks, maps, roi=None):
    """Exact PRO curve: (fpr, pro, thresholds) at every distinct map value, descending.

    PRO(t) is the mean, over all connected ground-truth regions (8-connectivity,
    each image labelled separately) of all images, of the fraction of the region
    with ``map >= t``. FPR(t) is the fraction of normal pixels (mask 0, all images)
    with ``map >= t``. Both are cumulative sums once pixels are sorted by score:
    a pixel of region r adds 1 / (n_regions * |r|) to PRO and a normal pixel adds
    1 / n_normal to FPR, so every distinct threshold is used at O(P log P) cost.
    With ``roi`` the ground truth is first cut to the ROI and only ROI pixels count.
    The curve starts at (0, 0) (threshold +inf) and ends at (1, 1).

    Returns None when there is no region or no normal pixel.
    """
    ms, As, rs = _pixel_arrays(masks, maps, roi)
    weights, scores = [], []
    n_regions, n_normal = 0, 0
    for m, a, r in zip(ms, As, rs):
        m = m & r
        labels, k = ndimage.label(m, structure=_EIGHT_CONNECTED)
        sizes = np.bincount(labels.ravel(), minlength=k + 1)
        inv_size = np.zeros(k + 1, np.float64)
        inv_size[1:] = 1.0 / sizes[1:]
        # Region pixels carry +1/|r| (PRO part), normal pixels carry -1 (FPR part).
        w = np.where(m, inv_size[labels], -1.0)[r]
        weights.append(w)
        scores.append(a[r])
        n_regions += k
        n_normal += int(np.count_nonzero(r & ~m))
    if n_regions == 0 or n_normal == 0:
        logging.warning("AUPRO is undefined: %d ground-truth regions and %d normal "
                        "pixels (both are needed); reporting None.", n_regions, n_normal)
        return None
    s = np.concatenate(scores)
    if not np.isfinite(s).all():
        raise ValueError("maps contain non-finite values")
    w = np.concatenate(weights)
    del weights, scores
    order = np.argsort(-s)  # order within ties is irrelevant: runs are grouped
    s, w = s[order], w[order]
    del order
    # Last index of each run of equal scores: the curve point for that threshold.
    last = np.flatnonzero(np.diff(s)) if s.size > 1 else np.zeros(0, np.int64)
    last = np.append(last, s.size - 1)
    pro = np.cumsum(np.where(w > 0, w, 0.0))[last] / n_regions
    fpr = np.cumsum(w < 0)[last] / n_normal
    thresholds = s[last].astype(np.float64)
    # Exact endpoints (cumsums can drift by an ulp).
    pro[-1], fpr[-1] = 1.0, 1.0
    fpr = np.concatenate([[0.0], fpr])
    pro = np.concatenate([[0.0], np.minimum(pro, 1.0)])
    thresholds = np.concatenate([[np.inf], thresholds])
    return fpr, pro, thresholds


def _area_up_to(fpr, pro, limit):
    """Trapezoid area under the (fpr, pro) polyline for fpr in [0, limit]."""
    n_in = int(np.searchsorted(fpr, limit, side="right"))   # fpr is non-decreasing
    x, y = fpr[:n_in], pro[:n_in]
    if n_in < fpr.size and x[-1] < limit:
        x0, x1, y0, y1 = fpr[n_in - 1], fpr[n_in], pro[n_in - 1], pro[n_in]
        y_lim = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
        x, y = np.append(x, limit), np.append(y, y_lim)
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


def aupro(masks, maps, fpr_limit: float = 0.3, num_thresholds: Optional[int] = None,
          roi=None) -> Optional[float]:
    """Normalised area under the PRO curve up to ``fpr_limit`` (MVTec AD AUPRO).

    The PRO curve (see ``pro_curve``) is integrated with the trapezoid rule over
    FPR in [0, fpr_limit], linearly interpolated at fpr_limit, and divided by
    fpr_limit, so a perfect map gives 1.0 (and a random one about fpr_limit / 2).

    Args:
      masks: [N, H, W] ground truth in {0, 1}; good images have all-zero masks.
      maps: [N, H, W] anomaly maps.
      fpr_limit: upper FPR integration limit in (0, 1] (0.3 in MVTec AD).
      num_thresholds: None (default) uses every distinct map value, which is exact.
        An int evaluates the curve only at that many thresholds evenly spaced
        between the map's min and max (for comparison with grid-based tools).
      roi: optional [N, H, W] in {0, 1}; only pixels inside the ROI count.
    Returns:
      AUPRO in [0, 1], or None with no ground-truth region or no normal pixel.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    curve = pro_curve(masks, maps, roi)
    if curve is None:
        return None
    fpr, pro, thresholds = curve
    if num_thresholds is not None:
        if num_thresholds < 2:
            raise ValueError(f"num_thresholds must be >= 2, got {num_thresholds}")
        grid = np.linspace(thresholds[-1], thresholds[1], int(num_thresholds))
        # Point for threshold g: the last distinct value >= g (thresholds descend).
        idx = np.searchsorted(-thresholds, -grid, side="right") - 1
        idx = np.unique(np.concatenate([[0], idx, [thresholds.size - 1]]))
        fpr, pro = fpr[idx], pro[idx]
    return _area_up_to(fpr, pro, float(fpr_limit)) / float(fpr_limit)


# --------------------------------------------------------------------------- all at once
def _to_json_number(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def evaluate_all(labels, scores, masks=None, maps=None, defects: Optional[Sequence[str]] = None,
                 threshold: Optional[float] = None, rois=None, fpr_limit: float = 0.3) -> dict:
    """Every evaluation metric in one JSON-serialisable dict.

    Args:
      labels: [N] 0 good / 1 anomalous.
      scores: [N] image anomaly scores.
      masks: optional [N, H, W] ground truth (or a sequence with None for images
        without ground truth; good images carry all-zero masks). Pixel metrics use
        only images with a mask.
      maps: anomaly maps matching masks; required when masks are given.
      defects: optional [N] defect-type names; adds per_defect_image_auroc, each
        defect's anomalous images against all good images.
      threshold: optional decision threshold (``score > threshold`` is anomalous);
        adds threshold, false_alarm_rate, tpr, fpr, precision, recall, accuracy, f1.
      rois: optional [N, H, W] regions of interest; adds pixel_auroc_roi, aupro_roi.
      fpr_limit: AUPRO integration limit.
    Returns:
      dict; metrics that cannot be computed are None.
    """
    y, s = _labels_and_scores(labels, scores)
    f1, f1_thr = _best_f1(y, s)
    out = {
        "image_auroc": image_auroc(y, s),
        "pixel_auroc": None,
        "aupro": None,
        "image_f1_max": f1,
        "image_f1_max_threshold": f1_thr,
        "pixel_f1_max": None,
        "per_defect_image_auroc": {},
    }
    if defects is not None:
        d = np.asarray(defects, dtype=object).reshape(-1)
        if d.size != y.size:
            raise ValueError(f"defects ({d.size}) and labels ({y.size}) differ in length")
        good = y == 0
        for name in sorted({str(x) for x in d[y == 1]}):
            sel = good | ((d.astype(str) == name) & (y == 1))
            out["per_defect_image_auroc"][name] = image_auroc(y[sel], s[sel])

    if masks is not None:
        if maps is None:
            raise ValueError("maps are required with masks")
        mask_l, map_l = _image_list(masks, "masks"), _image_list(maps, "maps")
        if len(mask_l) != len(map_l):
            raise ValueError(f"masks ({len(mask_l)}) and maps ({len(map_l)}) differ in length")
        keep = [i for i, m in enumerate(mask_l) if m is not None]
        pm = [mask_l[i] for i in keep]
        pa = [map_l[i] for i in keep]
        out["pixel_auroc"] = pixel_auroc(pm, pa)
        out["aupro"] = aupro(pm, pa, fpr_limit=fpr_limit)
        out["pixel_f1_max"] = pixel_f1_max(pm, pa)[0]
        if rois is not None:
            roi_l = _image_list(rois, "rois")
            if len(roi_l) != len(mask_l):
                raise ValueError(f"rois ({len(roi_l)}) and masks ({len(mask_l)}) differ in length")
            pr = [np.ones(pm[j].shape, bool) if roi_l[i] is None else roi_l[i]
                  for j, i in enumerate(keep)]
            out["pixel_auroc_roi"] = pixel_auroc(pm, pa, roi=pr)
            out["aupro_roi"] = aupro(pm, pa, fpr_limit=fpr_limit, roi=pr)
    elif rois is not None:
        out["pixel_auroc_roi"] = None
        out["aupro_roi"] = None

    if threshold is not None:
        out["threshold"] = float(threshold)
        out["false_alarm_rate"] = false_alarm_rate(y, s, threshold)
        out.update(detection_rates(y, s, threshold))

    for k, v in out.items():
        if k == "per_defect_image_auroc":
            out[k] = {name: _to_json_number(a) for name, a in v.items()}
        else:
            out[k] = _to_json_number(v)
    return out
