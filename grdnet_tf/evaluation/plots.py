"""Overlays and evaluation plots written as PNG files (heatmap colours: grdnet_tf.heatmap).

Charts are drawn with matplotlib's object API on an Agg canvas (no pyplot): no GUI
backend, no global backend switch in the caller's process, no figures left open.
Every file is written atomically (temporary file in the same folder, then
``os.replace``), so a reader never sees a half-written PNG; its mode follows the umask
(`grdnet_tf.file_modes`).

No TensorFlow here: this module must import fast.
"""
from __future__ import annotations

import math
import os
import tempfile
from typing import Optional

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from grdnet_tf import file_modes, heatmap


GT_CONTOUR_RGB = (0, 255, 0)       # ground-truth contour colour in overlays


def _as_rgb_uint8(image) -> np.ndarray:
    """uint8 or float-in-[0, 1] image, [H, W], [H, W, 1] or [H, W, 3] -> uint8 [H, W, 3]."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3 or img.shape[-1] not in (1, 3):
        raise ValueError(f"image must be [H, W], [H, W, 1] or [H, W, 3], got {img.shape}")
    if img.dtype != np.uint8:
        img = np.rint(np.clip(img.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    return img


def overlay(image, anomaly_map, gt_mask=None, alpha: float = heatmap.ALPHA) -> np.ndarray:
    """Blend a heatmap onto an image and outline the ground truth.

    Args:
      image: uint8 [H, W, 3], [H, W, 1] or [H, W] (float images in [0, 1] are
        also accepted and scaled by 255).
      anomaly_map: float [H, W] in [0, 1], at the image resolution.
      gt_mask: optional [H, W] (or [H, W, 1]) ground truth; nonzero = anomalous.
        Its contours are drawn in green, 1 px wide, on top of the blend.
      alpha: heatmap weight; result = (1 - alpha) * image + alpha * colorize(map).
    Returns:
      uint8 RGB [H, W, 3].
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    img = _as_rgb_uint8(image)
    heat = heatmap.colorize(anomaly_map)
    if heat.shape != img.shape:
        raise ValueError(f"anomaly_map {heat.shape[:2]} must match image {img.shape[:2]}")
    out = (1.0 - alpha) * img.astype(np.float32) + alpha * heat.astype(np.float32)
    out = np.ascontiguousarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
    if gt_mask is not None:
        m = np.asarray(gt_mask)
        if m.ndim == 3 and m.shape[-1] == 1:
            m = m[..., 0]
        if m.shape != img.shape[:2]:
            raise ValueError(f"gt_mask {m.shape} must match image {img.shape[:2]}")
        binary = (m > 0.5 if m.dtype.kind == "f" else m > 0).astype(np.uint8)
        contours, _ = cv2.findContours(binary, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, GT_CONTOUR_RGB, thickness=1)
    return out


def _atomic_write(path, data: bytes) -> None:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        file_modes.follow_umask(tmp)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_png(path, rgb) -> None:
    """Write a uint8 RGB [H, W, 3] (or grey [H, W] / [H, W, 1]) image as PNG, atomically."""
    img = np.asarray(rgb)
    if img.dtype != np.uint8:
        raise ValueError(f"save_png expects uint8, got {img.dtype}")
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 3 and img.shape[-1] == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
    elif img.ndim != 2:
        raise ValueError(f"save_png expects [H, W, 3] or [H, W], got {img.shape}")
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise IOError(f"PNG encoding failed for {path}")
    _atomic_write(path, buf.tobytes())


def _save_figure(fig: Figure, path) -> None:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    save_png(path, np.ascontiguousarray(rgba[..., :3]))


def _new_figure(title: str, xlabel: str, ylabel: str, size=(5.0, 4.0)):
    fig = Figure(figsize=size, dpi=100, layout="tight")
    ax = fig.add_subplot()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    return fig, ax


def roc_curve_png(labels, scores, path, title: str = "") -> None:
    """ROC curve with its AUROC in the legend; only the chance line if one class is present."""
    from sklearn.metrics import auc, roc_curve   # imported here: charts only

    y = np.asarray(labels).reshape(-1).astype(np.int8)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    fig, ax = _new_figure(title, "False positive rate", "True positive rate")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    if 0 < y.sum() < y.size:
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, color="C0", lw=2, label=f"ROC (AUROC = {auc(fpr, tpr):.4f})")
    else:
        ax.text(0.5, 0.1, "AUROC undefined: one class only", ha="center")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right")
    _save_figure(fig, path)


def score_histogram_png(labels, scores, threshold: Optional[float], path,
                        title: str = "") -> None:
    """Histograms of normal and anomalous scores (shared bins) and the threshold line."""
    y = np.asarray(labels).reshape(-1).astype(np.int8)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    fig, ax = _new_figure(title, "Anomaly score", "Count")
    finite = s[np.isfinite(s)]
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        if threshold is not None and math.isfinite(threshold):
            lo, hi = min(lo, float(threshold)), max(hi, float(threshold))
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, min(50, max(10, finite.size // 2)) + 1)
        for cls, name, colour in ((0, "normal", "C0"), (1, "anomalous", "C3")):
            vals = s[(y == cls) & np.isfinite(s)]
            if vals.size:
                ax.hist(vals, bins=bins, alpha=0.6, color=colour,
                        label=f"{name} (n={vals.size})")
    if threshold is not None:
        ax.axvline(float(threshold), color="k", ls="--", lw=1.5,
                   label=f"threshold = {float(threshold):.4g}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right")
    _save_figure(fig, path)


def learning_curve_png(epochs, series: dict, path, title: str = "") -> None:
    """One line per series (metric vs epoch); None / NaN values leave gaps."""
    x = np.asarray(epochs, dtype=np.float64).reshape(-1)
    fig, ax = _new_figure(title, "Epoch", "Value", size=(6.0, 4.0))
    for name, values in series.items():
        v = np.array([np.nan if a is None else float(a) for a in values], dtype=np.float64)
        if v.size != x.size:
            raise ValueError(f"series {name!r} has {v.size} values for {x.size} epochs")
        ax.plot(x, v, marker="o" if x.size <= 30 else None, ms=3, label=str(name))
    if series:
        ax.legend(loc="best")
    _save_figure(fig, path)
