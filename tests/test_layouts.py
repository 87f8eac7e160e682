"""Data layouts (MVTec AD, native MVTec 3D-AD, plain folder), ROI rules (data.roi_path,
validation ROIs, paths relative to --data_dir) and the mask rules (binarisation, size
checks), on tiny trees in tmp_path. Indexing needs no TensorFlow; the cache tests import it.
"""
import logging
import os

import numpy as np
import pytest

from grdnet_tf import config as config_lib
from grdnet_tf.data import io, mvtec
from helpers_images import random_images


def rgb(seed, h=20, w=30):
    return random_images((h, w, 3), seed, np.uint8)


def box(h=20, w=30, value=255):
    mask = np.zeros((h, w), np.uint8)
    mask[h // 4:3 * h // 4, w // 4:3 * w // 4] = value
    return mask


def names(samples):
    return [(s.defect, os.path.basename(s.path), s.label,
             s.mask_path and os.path.basename(s.mask_path)) for s in samples]


@pytest.fixture
def mvtec3d(tmp_path, write_image):
    """Native MVTec 3D-AD: rgb/ and gt/ under each split folder, xyz/ ignored."""
    root = tmp_path / "tire"
    for i in range(4):
        write_image(root / "train" / "good" / "rgb" / f"{i:03d}.png", rgb(i))
        (root / "train" / "good" / "xyz").mkdir(parents=True, exist_ok=True)
        (root / "train" / "good" / "xyz" / f"{i:03d}.tiff").write_bytes(b"points")
    write_image(root / "validation" / "good" / "rgb" / "000.png", rgb(10))
    write_image(root / "test" / "good" / "rgb" / "000.png", rgb(20))
    write_image(root / "test" / "good" / "gt" / "000.png", np.zeros((20, 30), np.uint8))
    for i in range(2):
        write_image(root / "test" / "cut" / "rgb" / f"{i:03d}.png", rgb(30 + i))
    write_image(root / "test" / "cut" / "gt" / "000.png", box())
    return str(root)


def test_native_mvtec3d_layout(mvtec3d, caplog):
    assert mvtec.detect_layout(mvtec3d) == "mvtec3d"
    train, val = mvtec.index_train(mvtec3d)
    assert [os.path.relpath(s.path, mvtec3d) for s in train] == [
        os.path.join("train", "good", "rgb", f"{i:03d}.png") for i in range(4)]
    assert [os.path.relpath(s.path, mvtec3d) for s in val] == [
        os.path.join("validation", "good", "rgb", "000.png")]
    with caplog.at_level(logging.WARNING):
        test = mvtec.index_test(mvtec3d)
    assert names(test) == [("cut", "000.png", 1, "000.png"), ("cut", "001.png", 1, None),
                           ("good", "000.png", 0, None)]
    assert test[0].mask_path.endswith(os.path.join("cut", "gt", "000.png"))
    assert any("1 defective test images have no ground-truth" in r.getMessage()
               for r in caplog.records)


def test_plain_folder_layout(tmp_path, write_image):
    root = tmp_path / "parts"
    for i in range(10):
        write_image(root / "good" / f"n{i}.png", rgb(i))
    for i in range(2):
        write_image(root / "scratch" / f"s{i}.png", rgb(20 + i))
        write_image(root / "dent" / f"d{i}.jpg", rgb(30 + i))
    write_image(root / "masks" / "scratch" / "s0_mask.png", box())  # per defect folder
    write_image(root / "masks" / "d1.png", box())  # flat, for the other folders
    (root / "notes").mkdir()
    folder = mvtec.FolderLayout(mask_dir="masks", normal_test_fraction=0.3)
    assert mvtec.detect_layout(str(root)) == "folder"
    train, val = mvtec.index_train(str(root), val_fraction=0.2, seed=1, folder=folder)
    test = mvtec.index_test(str(root), folder=folder, seed=1)
    normals = {s.path for s in train} | {s.path for s in val}
    test_normals = [s.path for s in test if s.label == 0]
    # 10 normals: 3 held out for the test split (its own draw), 1 of the other 7 for
    # validation; the three sets are disjoint and cover the folder.
    assert (len(train), len(val), len(test_normals)) == (6, 1, 3)
    assert not normals & set(test_normals) and len(normals | set(test_normals)) == 10
    assert mvtec.index_test(str(root), folder=folder, seed=1) == test  # seeded
    assert names([s for s in test if s.label]) == [
        ("dent", "d0.jpg", 1, None), ("dent", "d1.jpg", 1, "d1.png"),
        ("scratch", "s0.png", 1, "s0_mask.png"), ("scratch", "s1.png", 1, None)]
    # Named folders instead of "every other folder with images"; a normal test folder.
    write_image(root / "ok_test" / "t.png", rgb(40))
    named = mvtec.FolderLayout(abnormal_dirs="scratch", normal_test_dir="ok_test")
    test = mvtec.index_test(str(root), folder=named)
    assert names(test) == [("good", "t.png", 0, None), ("scratch", "s0.png", 1, None),
                           ("scratch", "s1.png", 1, None)]
    train, _ = mvtec.index_train(str(root), val_fraction=0.0, folder=named)
    assert len(train) == 10
    with pytest.raises(FileNotFoundError, match=r"data.folder.abnormal_dirs='nope'"):
        mvtec.index_test(str(root), folder=mvtec.FolderLayout(abnormal_dirs="nope"))


def test_folder_layout_from_config_keys(tmp_path, write_image):
    root = tmp_path / "c"
    for i in range(3):
        write_image(root / "ok" / f"{i}.png", rgb(i))
        write_image(root / "bad" / f"{i}.png", rgb(10 + i))
    config = config_lib.with_overrides(config_lib.base_config(), {
        "data.layout": "folder", "data.folder.normal_dir": "ok",
        "data.folder.normal_test_fraction": "0.34", "data.val_fraction": "0.5"})
    train, val = mvtec.index_train(str(root), **mvtec.config_kwargs(config))
    test = mvtec.index_test(str(root), **mvtec.config_kwargs(config, test=True))
    assert (len(train), len(val)) == (1, 1)
    assert [(s.defect, s.label) for s in test] == [("bad", 1)] * 3 + [("good", 0)]


def test_unknown_layout_lists_the_accepted_ones(tmp_path, write_image):
    write_image(tmp_path / "x" / "images" / "a.png", rgb(0))
    (tmp_path / "x" / "labels.csv").write_text("a,0")
    for index in (mvtec.index_train, mvtec.index_test):
        with pytest.raises(ValueError) as error:
            index(str(tmp_path / "x"))
        message = str(error.value)
        assert "unknown data layout (found: images/, labels.csv)" in message
        for layout in ("mvtec (train/good/*", "mvtec3d (train/good/rgb/*", "folder ("):
            assert layout in message
    with pytest.raises(FileNotFoundError, match="category folder not found"):
        mvtec.index_train(str(tmp_path / "missing"))


@pytest.fixture
def category(tmp_path, write_image):
    """MVTec AD with a validation folder whose file names repeat the training ones."""
    root = tmp_path / "cat"
    for i in range(3):
        write_image(root / "train" / "good" / f"{i:03d}.png", rgb(i))
        write_image(root / "validation" / "good" / f"{i:03d}.png", rgb(10 + i))
    write_image(root / "test" / "good" / "000.png", rgb(20))
    write_image(root / "test" / "crack" / "000.png", rgb(21))
    return str(root)


def test_roi_dir_applies_to_validation_images(category, write_image, caplog):
    for i in range(3):
        write_image(os.path.join(category, "rois", f"{i:03d}.png"), box())
    # The validation images repeat the training names: one folder cannot hold both.
    with pytest.raises(ValueError, match=r"share names \(e.g. '000'\).*rois.validation"):
        mvtec.index_train(category, roi_dir="rois")
    for i in range(2):
        write_image(os.path.join(category, "rois", "validation", f"{i:03d}.png"), box())
    with caplog.at_level(logging.INFO):
        train, val = mvtec.index_train(category, roi_dir="rois")
    assert [s.roi_path is not None for s in train] == [True] * 3
    assert [os.path.relpath(s.roi_path, category) if s.roi_path else None for s in val] == [
        os.path.join("rois", "validation", "000.png"),
        os.path.join("rois", "validation", "001.png"), None]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ROIs")]
    assert len(lines) == 1 and lines[0].endswith(
        "3 of 3 training and 2 of 3 validation images have an ROI mask; the other 1 use the "
        "whole image as ROI")
    # Without roi_dir, validation/roi is the default for validation images.
    os.rename(os.path.join(category, "rois", "validation"),
              os.path.join(category, "validation", "roi"))
    _, val = mvtec.index_train(category)
    assert [s.roi_path is not None for s in val] == [True, True, False]


def test_relative_roi_paths_are_inside_data_dir(category, write_image, tmp_path,
                                                monkeypatch):
    """One rule: a relative data.roi_dir / data.roi_path is inside --data_dir, never the
    working directory (a run resumes and evaluates from anywhere)."""
    roi = write_image(os.path.join(category, "roi.png"), box())
    write_image(tmp_path / "cwd" / "rois" / "000.png", box())
    write_image(tmp_path / "cwd" / "rois" / "validation" / "002.png", box())
    monkeypatch.chdir(tmp_path / "cwd")
    with pytest.raises(FileNotFoundError, match=r"data.roi_dir='rois' -> .*cat.rois \(a "
                                                r"relative path is inside --data_dir"):
        mvtec.index_train(category, roi_dir="rois")
    train, val = mvtec.index_train(category, roi_dir=str(tmp_path / "cwd" / "rois"))
    assert [s.roi_path is not None for s in train + val] == [True, False, False,
                                                             False, False, True]
    train, val = mvtec.index_train(category, roi_path="roi.png")
    test = mvtec.index_test(category, roi_path="roi.png")
    assert {s.roi_path for s in train + val + test} == {roi}  # one ROI for every image
    with pytest.raises(FileNotFoundError, match="data.roi_path='none.png'"):
        mvtec.index_train(category, roi_path="none.png")
    with pytest.raises(ValueError, match="data.roi_dir and data.roi_path are both set"):
        config_lib.with_overrides(config_lib.base_config(),
                                  {"data.roi_dir": "rois", "data.roi_path": "roi.png"})


# --------------------------------------------------------------------------- masks
def test_mask_rule_binary_and_non_binary(tmp_path, write_image):
    binary01 = write_image(tmp_path / "01.png", box(value=1))
    soft = box(value=200)
    soft[5, 7:23] = 127  # an antialiased edge below half scale: outside
    soft[0, 0] = 3  # JPEG-like noise: outside
    soft_path = write_image(tmp_path / "soft.png", soft)
    deep = write_image(tmp_path / "deep.png", np.where(box() > 0, 40000, 1000).astype(np.uint16))
    notes = io.MaskNotes("ROI")
    inside = 10 * 15  # box(): rows 5..14, columns 7..21
    assert io.read_mask(binary01, notes=notes, image_shape=(20, 30)).sum() == inside
    mask = io.read_mask(soft_path, notes=notes, image_shape=(20, 30))
    assert mask.sum() == inside - 15 and mask[0, 0] == 0 and mask[5, 10] == 0
    assert io.read_mask(deep, notes=notes, image_shape=(20, 30)).sum() == inside
    assert notes.non_binary == [soft_path, deep] and notes.resized == []


def test_mask_size_checks(tmp_path, write_image, caplog):
    notes = io.MaskNotes("ground-truth")
    half = write_image(tmp_path / "half.png", box(10, 15))
    assert io.read_mask(half, (20, 30), notes=notes, image_shape=(20, 30, 3)).sum() == 160
    other = write_image(tmp_path / "other.png", box(20, 20))
    with pytest.raises(ValueError, match=r"ground-truth mask .*other.png is 20x20 .*image is "
                                         r"30x20: another aspect ratio"):
        io.read_mask(other, notes=notes, image_shape=(20, 30))
    with caplog.at_level(logging.WARNING):
        notes.warn()
    assert [r.getMessage() for r in caplog.records] == [
        f"1 ground-truth mask(s) differ in size from their image and were resized to it "
        f"(nearest neighbour), e.g. {half} (15x10, image 30x20)"]


def test_cache_checks_roi_sizes(category, write_image, caplog):
    from grdnet_tf.data import pipeline  # imports TensorFlow
    write_image(os.path.join(category, "train", "roi", "000.png"), box(10, 15))
    soft = box()
    soft[0, 0] = 9
    write_image(os.path.join(category, "train", "roi", "001.png"), soft)
    train, _ = mvtec.index_train(category)
    with caplog.at_level(logging.WARNING):
        cache = pipeline.load_cache(train, (8, 12), 3)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("1 ROI mask(s) differ in size") for m in messages)
    assert any(m.startswith("1 ROI mask(s) are not binary") for m in messages)
    expected = io.read_mask(os.path.join(category, "train", "roi", "001.png"), (8, 12))
    assert (cache.rois[1, ..., 0] == expected).all() and expected.sum() == 4 * 6
    assert cache.rois[0, ..., 0].sum() == 4 * 7  # from 15x10 to 12x8: nearest neighbour
    write_image(os.path.join(category, "train", "roi", "002.png"), box(30, 30))
    train, _ = mvtec.index_train(category)
    with pytest.raises(ValueError, match="ROI mask .*002.png is 30x30"):
        pipeline.load_cache(train, (8, 12), 3)
