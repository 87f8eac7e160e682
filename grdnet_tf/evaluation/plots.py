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
from typing import Optional

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from grdnet_tf import file_modes, heatmap


GT_CONTOUR_RGB = (0, 255, 0)       # ground-truth contour colour in overlays
ROI_CONTOUR_RGB = (255, 255, 255)  # the inspected region's outline (grdnet-predict --roi)


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
        draw_outline(out, gt_mask, GT_CONTOUR_RGB, "gt_mask")
    return out


def draw_outline(rgb, mask, colour, name="mask") -> None:
    """Draws the 1-px contours of ``mask`` ([H, W] or [H, W, 1]; nonzero, or > 0.5 for
    floats, is inside) onto the uint8 [H, W, 3] image ``rgb`` in place, in ``colour``."""
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.shape != rgb.shape[:2]:
        raise ValueError(f"{name} {m.shape} must match image {rgb.shape[:2]}")
    binary = (m > 0.5 if m.dtype.kind == "f" else m > 0).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(rgb, contours, -1, colour, thickness=1)


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
    file_modes.atomic_write(path, buf.tobytes())


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


def roc_curve_png(labels, scores, path, title: str = "",
                  threshold: Optional[float] = None) -> None:
    """ROC curve with its AUROC in the legend; only the chance line if one class is present.

    With `threshold` the operating point (false-positive and true-positive rate of
    ``score > threshold``) is marked and labelled.
    """
    from sklearn.metrics import auc, roc_curve   # imported here: charts only

    y = np.asarray(labels).reshape(-1).astype(np.int8)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    fig, ax = _new_figure(title, "False positive rate", "True positive rate")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    if 0 < y.sum() < y.size:
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, color="C0", lw=2, label=f"ROC (AUROC = {auc(fpr, tpr):.4f})")
        if threshold is not None and math.isfinite(threshold):
            flagged = s > float(threshold)
            point = (float(flagged[y == 0].mean()), float(flagged[y == 1].mean()))
            ax.plot(*point, "o", color="C3", ms=8,
                    label=f"threshold {float(threshold):.4g}: FPR {point[0]:.2f}, "
                          f"TPR {point[1]:.2f}")
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


# --- QA pictures: per-image panels and the error gallery ---------------------------------

MASK_RGB = (255, 0, 0)             # predicted defect mask colour in panels
PANEL_SIZE = 2.4                   # inches per panel column
HEAT_CMAP = "jet"


def threshold_norm(pixel_threshold: float):
    """Colour scale of panel heatmaps: [0, 1] with the pixel threshold at the middle colour
    (green-yellow on jet), so 'above the threshold' reads the same on every image instead of
    every map being stretched to its own range."""
    from matplotlib.colors import TwoSlopeNorm

    centre = min(max(float(pixel_threshold), 1e-3), 1.0 - 1e-3)
    return TwoSlopeNorm(vmin=0.0, vcenter=centre, vmax=1.0)


def mask_overlay(image, mask, gt_mask=None, alpha: float = 0.45) -> np.ndarray:
    """Predicted mask (red, `alpha`) on the image and the ground-truth outline (green)."""
    img = _as_rgb_uint8(image)
    m = np.asarray(mask).astype(bool)
    out = img.astype(np.float32)
    out[m] = (1.0 - alpha) * out[m] + alpha * np.asarray(MASK_RGB, np.float32)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return overlay(out, np.zeros(img.shape[:2], np.float32), gt_mask, alpha=0.0)


def verdict_title(name, score, threshold, truth=None) -> str:
    """'name: score 0.412 > 0.380 -> ANOMALOUS (truth: cut)'."""
    anomalous = threshold is not None and score > threshold
    words = "ANOMALOUS" if anomalous else "normal"
    sign = ">" if anomalous else "<="
    text = (f"{name}: score {score:.4f}" + ("" if threshold is None else
                                            f" {sign} {threshold:.4f} -> {words}"))
    return text + ("" if truth is None else f" (truth: {truth})")


def panel_png(path, image, reconstruction, anomaly_map, mask, pixel_threshold, title,
              gt_mask=None) -> None:
    """One QA panel: input (with the ground-truth outline), reconstruction, heatmap on the
    image scaled around the pixel threshold with a colour bar, and the predicted defect
    mask; `title` carries score and verdict (`verdict_title`). All at the image size."""
    img = _as_rgb_uint8(image)
    fig = Figure(figsize=(4 * PANEL_SIZE + 0.8, PANEL_SIZE + 0.7), dpi=100, layout="constrained")
    axes = fig.subplots(1, 4)
    outlined = overlay(img, np.zeros(img.shape[:2], np.float32), gt_mask, alpha=0.0)
    axes[0].imshow(outlined)
    axes[0].set_title("input" + ("" if gt_mask is None else " + ground truth"), fontsize=8)
    axes[1].imshow(_as_rgb_uint8(reconstruction))
    axes[1].set_title("reconstruction", fontsize=8)
    axes[2].imshow(img)
    heat = axes[2].imshow(np.asarray(anomaly_map, np.float32), cmap=HEAT_CMAP,
                          norm=threshold_norm(pixel_threshold), alpha=0.55)
    axes[2].set_title("anomaly map", fontsize=8)
    bar = fig.colorbar(heat, ax=axes[2], fraction=0.046, pad=0.02,
                       ticks=[0.0, float(pixel_threshold), 1.0])
    bar.ax.set_yticklabels(["0", f"{pixel_threshold:.2f} (pixel thr.)", "1"], fontsize=6)
    axes[3].imshow(mask_overlay(img, mask, gt_mask))
    axes[3].set_title(f"defect mask ({100.0 * np.mean(mask):.1f}% of pixels)", fontsize=8)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    _save_figure(fig, path)


def gallery_png(path, rows, title: str = "", per_row: int = 6) -> None:
    """Thumbnails in labelled rows: ``rows`` = [(row label, [(rgb image, caption), ...])].

    Empty rows say so ('none'), so a gallery without false negatives is explicit about it.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("gallery_png needs at least one row")
    cols = max(1, min(per_row, max((len(items) for _, items in rows), default=1)))
    fig = Figure(figsize=(cols * 1.7 + 1.6, len(rows) * 1.9 + 0.4), dpi=100,
                 layout="constrained")
    grid = fig.subplots(len(rows), cols, squeeze=False)
    for r, (label, items) in enumerate(rows):
        for c in range(cols):
            ax = grid[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(items):
                image, caption = items[c]
                ax.imshow(_as_rgb_uint8(image))
                ax.set_title(caption, fontsize=6)
            else:
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if c == 0:
                    ax.text(0.5, 0.5, "none", ha="center", va="center", fontsize=8)
        grid[r][0].set_ylabel(label, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    _save_figure(fig, path)
