"""Tests for grdnet_tf.heatmap (colour table) and evaluation.plots (overlays, PNG files)."""
import os

import cv2
import numpy as np
import pytest

from grdnet_tf import heatmap
from grdnet_tf.evaluation import plots


def test_jet_lut_table():
    lut = heatmap.JET_LUT
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    assert not lut.flags.writeable
    np.testing.assert_array_equal(lut[0], [0, 0, 128])       # dark blue
    np.testing.assert_array_equal(lut[255], [128, 0, 0])     # dark red
    np.testing.assert_array_equal(lut[128], [130, 255, 126])  # x = 128/255: green-ish


def test_colorize_indexes_the_lut():
    amap = np.array([[0.0, 1.0], [0.5, 2.0]], np.float32)
    rgb = heatmap.colorize(amap)
    assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[0, 0], heatmap.JET_LUT[0])
    np.testing.assert_array_equal(rgb[0, 1], heatmap.JET_LUT[255])
    np.testing.assert_array_equal(rgb[1, 0], heatmap.JET_LUT[128])   # rint(127.5) = 128
    np.testing.assert_array_equal(rgb[1, 1], heatmap.JET_LUT[255])   # clipped
    assert heatmap.colorize(amap[..., None]).shape == (2, 2, 3)


@pytest.mark.parametrize("shape", [(16, 20, 3), (16, 20, 1), (16, 20)])
def test_overlay_shapes_and_blend(shape):
    image = np.full(shape, 100, np.uint8)
    amap = np.zeros((16, 20), np.float32)
    out = plots.overlay(image, amap, alpha=0.5)
    assert out.shape == (16, 20, 3) and out.dtype == np.uint8
    expected = np.rint(0.5 * 100 + 0.5 * heatmap.JET_LUT[0].astype(np.float32))
    np.testing.assert_array_equal(out[0, 0], expected)
    np.testing.assert_array_equal(plots.overlay(image, amap, alpha=0.0)[..., 0], 100)
    np.testing.assert_array_equal(plots.overlay(image, amap, alpha=1.0)[0, 0], heatmap.JET_LUT[0])


def test_overlay_draws_green_ground_truth_contour():
    image = np.full((32, 32, 3), 100, np.uint8)
    amap = np.full((32, 32), 0.3, np.float32)
    gt = np.zeros((32, 32), np.uint8)
    gt[8:20, 10:24] = 1
    green = np.all(plots.overlay(image, amap, gt) == [0, 255, 0], axis=-1)
    assert not np.all(plots.overlay(image, amap) == [0, 255, 0], axis=-1).any()
    # Exactly the 1-px border of the rectangle, nothing inside or outside.
    border = np.zeros_like(green)
    border[8:20, 10:24] = True
    border[9:19, 11:23] = False
    np.testing.assert_array_equal(green, border)
    with pytest.raises(ValueError):
        plots.overlay(image, np.zeros((16, 16)))


def test_save_png_roundtrip_and_no_tmp_file(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    path = tmp_path / "sub" / "img.png"
    plots.save_png(path, rgb)
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(back[..., ::-1], rgb)     # RGB order preserved
    plots.save_png(path, rgb[..., 0])                         # overwrite with grey
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape == (10, 12)
    assert os.listdir(path.parent) == ["img.png"]


def _assert_png(path):
    img = cv2.imread(str(path))
    assert img is not None and img.ndim == 3 and img.shape[2] == 3 and img.shape[0] > 100
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_chart_pngs(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.array([0] * 20 + [1] * 10)
    scores = rng.random(30) + 0.5 * labels
    plots.roc_curve_png(labels, scores, tmp_path / "roc.png", title="roc")
    plots.roc_curve_png(np.zeros(5), rng.random(5), tmp_path / "roc_one_class.png")
    plots.score_histogram_png(labels, scores, 0.7, tmp_path / "hist.png", title="hist")
    plots.score_histogram_png(np.zeros(5), rng.random(5), 0.5, tmp_path / "hist_normal.png")
    plots.score_histogram_png([1], [0.3], None, tmp_path / "hist_single.png")
    plots.learning_curve_png([1, 2, 3], {"image_auroc": [0.5, 0.7, 0.8],
                                         "pixel_auroc": [None, 0.6, float("nan")]},
                             tmp_path / "curve.png", title="curves")
    for name in ("roc", "roc_one_class", "hist", "hist_normal", "hist_single", "curve"):
        _assert_png(tmp_path / f"{name}.png")
    with pytest.raises(ValueError):
        plots.learning_curve_png([1, 2], {"x": [1.0]}, tmp_path / "bad.png")
