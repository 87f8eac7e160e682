"""grdnet_tf.roi and grdnet-roi on synthetic images with known foreground (no TensorFlow)."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from grdnet_tf import roi
from grdnet_tf.data import io

from conftest import REPO

H, W = 60, 80


def disk(radius=18, centre=(40, 30), shape=(H, W)):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return ((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 <= radius ** 2).astype(np.uint8)


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def object_image(truth, inside, outside, seed=0, noise=6.0):
    """uint8 RGB: ``inside`` grey on the truth, ``outside`` elsewhere, plus seeded noise."""
    rng = np.random.default_rng(seed)
    grey = np.where(truth > 0, inside, outside) + rng.normal(0, noise, truth.shape)
    return np.repeat(np.clip(np.rint(grey), 0, 255).astype(np.uint8)[:, :, None], 3, axis=2)


def write_category(root, images, test=None):
    """A category folder with train/good/<i>.png and, with ``test``, test/defect/<i>.png
    plus ground_truth/defect/<i>_mask.png from [(image, gt mask)]."""
    for i, image in enumerate(images):
        path = os.path.join(root, "train", "good", f"{i:03d}.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cv2.imwrite(path, image[:, :, ::-1])
    for i, (image, gt) in enumerate(test or []):
        for folder, name, array in (("test/defect", f"{i:03d}.png", image[:, :, ::-1]),
                                    ("ground_truth/defect", f"{i:03d}_mask.png", gt * 255)):
            os.makedirs(os.path.join(root, folder), exist_ok=True)
            cv2.imwrite(os.path.join(root, folder, name), array)
    return str(root)


def test_grey_rule_finds_a_bright_or_a_dark_object():
    truth = disk()
    bright = object_image(truth, 180, 40)
    rule = roi.ForegroundRule()          # grey, auto polarity, Otsu, blur 2, keep 1
    found = roi.foreground_roi(bright, rule)
    assert found.dtype == np.uint8 and set(np.unique(found)) == {0, 1}
    assert iou(found, truth) > 0.97
    # The same object darker than its background: auto polarity follows the border.
    dark = 255 - bright
    np.testing.assert_array_equal(roi.foreground_roi(dark, rule), found)
    # Forcing the wrong polarity selects the background, and the disk is its hole.
    wrong = roi.ForegroundRule(polarity="bright", fill_holes=False)
    assert iou(roi.foreground_roi(dark, wrong), 1 - truth) > 0.97


def test_border_distance_finds_an_object_brighter_and_darker_than_the_background():
    truth = disk()
    grey = np.where(truth > 0, 200, 100).astype(np.float64)
    grey[:, :40][truth[:, :40] > 0] = 10                # left half of the disk: darker
    rng = np.random.default_rng(1)
    image = np.clip(np.rint(grey + rng.normal(0, 5, grey.shape)), 0, 255).astype(np.uint8)
    image = np.repeat(image[:, :, None], 3, axis=2)
    # The seam between the halves crosses the background grey: closing bridges it.
    grey_only = roi.foreground_roi(image, roi.ForegroundRule(close_radius=3))
    assert iou(grey_only, truth) < 0.5                  # one grey threshold: half the disk
    distance = roi.ForegroundRule(features=("border_distance",), close_radius=3)
    assert iou(roi.foreground_roi(image, distance), truth) > 0.97


def test_local_contrast_and_union_of_features():
    truth = np.zeros((H, W), np.uint8)
    truth[15:45, 20:60] = 1
    rng = np.random.default_rng(2)
    # A textured patch with the background's mean: no grey threshold can see it.
    image = np.where(truth > 0, rng.choice([40, 160], (H, W)), 100).astype(np.uint8)
    image = np.repeat(image[:, :, None], 3, axis=2)
    assert iou(roi.foreground_roi(image, roi.ForegroundRule()), truth) < 0.2
    rule = roi.ForegroundRule(features=("local_contrast",), blur_sigma=1, convex_hull=True)
    found = roi.foreground_roi(image, rule)
    assert iou(found, truth) > 0.9
    ys, xs = np.nonzero(found)          # the window reaches 1 px beyond the patch
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (14, 45, 19, 60)
    both = roi.ForegroundRule(features=("border_distance", "local_contrast"), blur_sigma=1,
                              convex_hull=True)
    assert (roi.foreground_roi(image, both) >= roi.foreground_roi(image, rule)).all()


def test_fixed_level_keeps_everything_but_the_dark_border():
    truth = np.ones((H, W), np.uint8)
    truth[:, :6] = 0                                   # a dark strip beside the part
    image = object_image(truth, 120, 5, noise=3)
    image[:, 40:] //= 3                                # shading on the part (about 40)
    rule = roi.ForegroundRule(polarity="bright", threshold="fixed", level=20, blur_sigma=0)
    np.testing.assert_array_equal(roi.foreground_roi(image, rule), truth)
    assert iou(roi.foreground_roi(image, roi.ForegroundRule(polarity="bright")), truth) < 0.7


def test_morphology_steps_exact_pixels():
    mask = np.zeros((30, 40), np.uint8)
    mask[2:7, 2:7] = 1            # 25 px
    mask[10:14, 20:24] = 1        # 16 px
    mask[20:23, 30:33] = 1        # 9 px
    two = roi.largest_components(mask, 2)
    assert two.sum() == 41 and two[20:23, 30:33].sum() == 0
    np.testing.assert_array_equal(roi.largest_components(mask, 0), mask)

    ring = disk(10, (20, 15), (30, 40)) - disk(5, (20, 15), (30, 40))
    np.testing.assert_array_equal(roi.fill_holes(ring), disk(10, (20, 15), (30, 40)))
    notch = mask.copy()
    notch[0:5, 2:7] = 0           # background that reaches the border stays background
    np.testing.assert_array_equal(roi.fill_holes(notch), notch)

    c_shape = np.zeros((30, 40), np.uint8)
    c_shape[5:25, 5:10] = c_shape[5:10, 5:30] = c_shape[20:25, 5:30] = 1
    hull = roi.convex_hulls(c_shape)
    expected = np.zeros_like(c_shape)
    expected[5:25, 5:30] = 1
    np.testing.assert_array_equal(hull, expected)

    rule = roi.ForegroundRule(polarity="bright", threshold="fixed", level=0, blur_sigma=0,
                              margin=2)
    dot = np.zeros((30, 40, 3), np.uint8)
    dot[15, 20] = 255
    grown = roi.foreground_roi(dot, rule)               # OpenCV's 5x5 ellipse: 17 px
    assert grown.sum() == 17 and grown[13:18, 18:23].sum() == 17


def test_template_resized_nearest():
    template = np.zeros((20, 20), np.uint8)
    template[5:15, 0:10] = 1
    out = roi.template_roi(template, (40, 30))
    expected = np.zeros((40, 30), np.uint8)
    expected[10:30, 0:15] = 1
    np.testing.assert_array_equal(out, expected)
    assert roi.template_roi(template, (20, 20)) is template


@pytest.mark.parametrize("kwargs, message", [
    (dict(threshold="mean"), "threshold='mean' is not allowed"),
    (dict(features=("edges",)), "feature='edges' is not allowed"),
    (dict(features=()), "give at least one"),
    (dict(open_radius=-1), "open_radius=-1 must be an integer >= 0"),
    (dict(keep=1.5), "keep=1.5"),
    (dict(level=255), "level=255"),
    (dict(features=("local_contrast",), blur_sigma=0), "needs blur_sigma > 0"),
])
def test_rule_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        roi.ForegroundRule(**kwargs).validate()


def test_write_rois_layout_previews_and_coverage(tmp_path):
    truths = [disk(18, (40 + 2 * i, 30)) for i in range(3)]
    images = [object_image(t, 180, 40, seed=i) for i, t in enumerate(truths)]
    gt_in = np.zeros((H, W), np.uint8)
    gt_in[25:35, 35:45] = 1                         # 100 px inside the disk
    gt_out = np.zeros((H, W), np.uint8)
    gt_out[0:4, 0:5] = 1                            # 20 px in a corner, outside it
    test = [(images[0], gt_in), (images[1], gt_in | gt_out)]
    category = write_category(tmp_path / "cat", images, test)
    out = str(tmp_path / "rois")
    summary = roi.write_rois(category, output_dir=out, splits=("train", "validation", "test"),
                             rule=roi.ForegroundRule(), preview_count=2)
    assert summary["written"] == {"train": 3, "test/defect": 2}
    assert summary["kept"] == {"train": 0, "test/defect": 0}
    for i, truth in enumerate(truths):
        mask = cv2.imread(os.path.join(out, "train", "roi", f"{i:03d}.png"),
                          cv2.IMREAD_UNCHANGED)
        assert mask.dtype == np.uint8 and mask.shape == (H, W)
        assert set(np.unique(mask)) == {0, 255}
        assert iou(mask // 255, truth) > 0.97
    assert sorted(os.listdir(os.path.join(out, "test_roi", "defect"))) == ["000.png",
                                                                             "001.png"]
    assert not os.path.exists(os.path.join(category, "train", "roi"))   # input untouched
    coverage = summary["gt_coverage"]
    assert coverage["defect"] == coverage["all"]
    assert (coverage["all"]["inside"], coverage["all"]["total"]) == (200, 220)
    assert coverage["all"]["worst"] == pytest.approx(100 / 120)
    previews = summary["previews"]
    assert set(previews) == {"train", "test"}
    sheet = cv2.imread(previews["train"])
    assert sheet.shape == (roi.TILE + 16, roi.PREVIEW_COLUMNS * roi.TILE, 3)
    with open(os.path.join(out, "roi_preview", roi.SUMMARY), encoding="utf-8") as f:
        assert json.load(f)["gt_coverage"]["all"]["total"] == 220


def test_existing_masks_are_kept_unless_overwrite(tmp_path):
    images = [object_image(disk(), 180, 40, seed=i) for i in range(2)]
    category = write_category(tmp_path / "cat", images)
    painted = np.zeros((H, W), np.uint8)
    painted[10:20, 10:20] = 255
    roi_dir = os.path.join(category, "train", "roi")
    os.makedirs(roi_dir)
    cv2.imwrite(os.path.join(roi_dir, "000.png"), painted)
    with open(os.path.join(roi_dir, "000.png"), "rb") as f:
        before = f.read()
    summary = roi.write_rois(category, rule=roi.ForegroundRule())
    assert summary["written"] == {"train": 1} and summary["kept"] == {"train": 1}
    with open(os.path.join(roi_dir, "000.png"), "rb") as f:
        assert f.read() == before
    assert summary["roi_share_mean_min_max"]["train"][1] == pytest.approx(100 / (H * W))
    summary = roi.write_rois(category, rule=roi.ForegroundRule(), overwrite=True)
    assert summary["written"] == {"train": 2}
    assert iou(io.read_mask(os.path.join(roi_dir, "000.png")), disk()) > 0.97
    assert not [n for n in os.listdir(roi_dir) if n.endswith(".tmp")]
    # A hand-painted mask of another extension is kept, never duplicated by overwrite.
    os.remove(os.path.join(roi_dir, "001.png"))
    cv2.imwrite(os.path.join(roi_dir, "001.bmp"), painted)
    assert roi.write_rois(category, rule=roi.ForegroundRule())["kept"] == {"train": 2}
    with pytest.raises(ValueError, match="001.bmp.*delete it first"):
        roi.write_rois(category, rule=roi.ForegroundRule(), overwrite=True)


def test_template_mode(tmp_path):
    images = [np.zeros((H, W, 3), np.uint8), np.zeros((30, 40, 3), np.uint8)]
    category = write_category(tmp_path / "cat", images)
    template = np.zeros((H, W), np.uint8)
    template[10:50, 20:60] = 255
    template_path = str(tmp_path / "template.png")
    cv2.imwrite(template_path, template)
    summary = roi.write_rois(category, template_path=template_path)
    assert summary["template"] == template_path and summary["rule"] is None
    np.testing.assert_array_equal(io.read_mask(os.path.join(category, "train", "roi",
                                                            "000.png")), template // 255)
    small = io.read_mask(os.path.join(category, "train", "roi", "001.png"))
    expected = np.zeros((30, 40), np.uint8)
    expected[5:25, 10:30] = 1
    np.testing.assert_array_equal(small, expected)


def test_bad_inputs_write_nothing(tmp_path):
    good = object_image(disk(), 180, 40)
    flat = np.zeros((H, W, 3), np.uint8)        # all black: nothing above level 100
    category = write_category(tmp_path / "cat", [good, flat])
    roi_dir = os.path.join(category, "train", "roi")
    level = roi.ForegroundRule(polarity="bright", threshold="fixed", level=100)
    with pytest.raises(ValueError, match=r"empty for 1 image\(s\), e\.g\. .*001\.png"):
        roi.write_rois(category, rule=level)
    assert not os.path.exists(roi_dir) and not os.path.exists(
        os.path.join(category, "roi_preview"))
    with open(os.path.join(category, "train", "good", "001.png"), "wb") as f:
        f.write(b"not a png")
    with pytest.raises(io.ImageReadError, match="001.png"):
        roi.write_rois(category, rule=roi.ForegroundRule())
    assert not os.path.exists(roi_dir)
    with pytest.raises(FileNotFoundError, match="category folder not found"):
        roi.write_rois(str(tmp_path / "nope"), rule=roi.ForegroundRule())
    with pytest.raises(ValueError, match="splits='tests' is not allowed"):
        roi.write_rois(category, splits=("tests",), rule=roi.ForegroundRule())
    with pytest.raises(FileNotFoundError, match="test folder not found"):
        roi.write_rois(category, splits=("test",), rule=roi.ForegroundRule())
    with pytest.raises(ValueError, match="not both"):
        roi.write_rois(category, rule=roi.ForegroundRule(), template_path="t.png")
    empty_template = str(tmp_path / "empty.png")
    cv2.imwrite(empty_template, np.zeros((5, 5), np.uint8))
    with pytest.raises(ValueError, match="template mask .*empty.png is empty"):
        roi.write_rois(category, template_path=empty_template)


def test_read_only_category_needs_output_dir(tmp_path):
    category = write_category(tmp_path / "cat", [object_image(disk(), 180, 40)])
    os.chmod(category, 0o555)           # marked read-only (root would still be allowed)
    try:
        with pytest.raises(ValueError, match="is not writable\\): pass --output_dir"):
            roi.write_rois(category, rule=roi.ForegroundRule())
        assert sorted(os.listdir(category)) == ["train"]
    finally:
        os.chmod(category, 0o755)


def _run_binary(*args):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-m", "grdnet_tf.bin.roi", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)


def test_binary(tmp_path):
    category = write_category(tmp_path / "cat", [object_image(disk(), 180, 40)])
    out = str(tmp_path / "out")
    done = _run_binary(f"--data_dir={category}", f"--output_dir={out}", "--close_radius=2",
                       "--margin=1")
    assert done.returncode == 0, done.stderr
    assert "train: 1 written, 0 kept" in done.stdout
    assert os.path.isfile(os.path.join(out, "train", "roi", "000.png"))
    with open(os.path.join(out, "roi_preview", roi.SUMMARY), encoding="utf-8") as f:
        rule = json.load(f)["rule"]
    assert (rule["close_radius"], rule["margin"], rule["features"]) == (2, 1, ["grey"])
    bad = _run_binary(f"--data_dir={category}", "--template=t.png", "--polarity=dark")
    assert bad.returncode == 2
    assert "error: --template excludes the rule flags --polarity" in bad.stderr
    missing = _run_binary(f"--data_dir={tmp_path / 'nope'}")
    assert missing.returncode == 2 and "error: category folder not found" in missing.stderr
