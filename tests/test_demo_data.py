"""The embedded demo dataset (grdnet_tf.data.demo) and its binary; no TensorFlow needed."""
import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

from grdnet_tf.data import demo, io, mvtec

SMALL = dict(image_size=(64, 64), n_train=6, n_test_good=2, n_test_defect=3, n_test_outside=2,
             n_validation=2)


def tree_hash(root):
    digest = hashlib.sha256()
    for folder, dirs, files in sorted(os.walk(root)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            digest.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()


def test_layout(demo_category):
    def names(*parts):
        return sorted(os.listdir(os.path.join(demo_category, *parts)))

    assert names() == sorted(["train", "test", "ground_truth", "test_roi", demo.MARKER])
    assert names("train", "good") == [f"{i:03d}.png" for i in range(12)]
    assert names("train", "roi") == names("train", "good")
    assert names("test") == ["good", "good_outside_roi", "scratch", "spot"]
    assert names("ground_truth") == ["scratch", "spot"]
    assert names("ground_truth", "spot") == ["000_mask.png", "001_mask.png"]
    for folder in names("test"):
        assert names("test_roi", folder) == names("test", folder)
    image = io.read_image(os.path.join(demo_category, "train", "good", "000.png"))
    assert image.shape == (64, 64, 3)


def test_indexing(demo_category):
    train, val = mvtec.index_train(demo_category, val_fraction=0.25, seed=0)
    assert len(train) == 9 and len(val) == 3
    assert all(s.roi_path is not None for s in train + val)
    test = mvtec.index_test(demo_category)
    labels = {s.defect: s.label for s in test}
    assert labels == {"good": 0, "good_outside_roi": 0, "scratch": 1, "spot": 1}
    assert all((s.mask_path is not None) == (s.label == 1) for s in test)
    assert all(s.roi_path is not None for s in test)


def test_defects_inside_or_outside_roi(demo_category):
    for s in mvtec.index_test(demo_category):
        roi = io.read_mask(s.roi_path)
        assert 0.15 < roi.mean() < 0.6
        if s.label:
            gt = io.read_mask(s.mask_path)
            assert gt.sum() >= 12 and not (gt & (1 - roi)).any()  # inside the ROI only


def test_outside_defects_are_on_the_background():
    """good_outside_roi images differ from the same image without defects only off-ROI."""
    image, roi, _ = demo._image(0, "good_outside_roi", 1, (64, 64), outside=True)
    assert roi.any()
    # Regenerate without defects from the same generator state.
    clean, clean_roi, _ = demo._image(0, "good_outside_roi", 1, (64, 64))
    np.testing.assert_array_equal(roi, clean_roi)
    changed = np.any(image != clean, axis=-1)
    assert changed.sum() >= 12 and not (changed & roi.astype(bool)).any()


def test_validation_folder_is_the_validation_split(tmp_path):
    """validation/good (with validation/roi) holds its own normal images; the indexer makes
    them the validation set and trains on every train/good image."""
    category = demo.make_demo_dataset(str(tmp_path), seed=3, **SMALL)
    assert sorted(os.listdir(os.path.join(category, "validation"))) == ["good", "roi"]
    assert sorted(os.listdir(os.path.join(category, "validation", "good"))) == [
        "000.png", "001.png"]
    train, val = mvtec.index_train(category, val_fraction=0.25, seed=0)
    assert len(train) == 6 and len(val) == 2
    assert all(os.sep + "validation" + os.sep in s.path for s in val)
    assert all(s.roi_path is not None for s in train + val)
    validation = io.read_image(os.path.join(category, "validation", "good", "000.png"))
    train_image = io.read_image(os.path.join(category, "train", "good", "000.png"))
    assert validation.shape == train_image.shape and (validation != train_image).any()
    with open(os.path.join(category, demo.MARKER)) as f:
        assert "validation/roi/001.png" in f.read().splitlines()
    with pytest.raises(ValueError, match="n_validation=-1"):
        demo.make_demo_dataset(str(tmp_path / "bad"), **{**SMALL, "n_validation": -1})
    assert not os.path.exists(tmp_path / "bad")


def test_deterministic_and_seeded(tmp_path):
    a = demo.make_demo_dataset(str(tmp_path / "a"), seed=3, **SMALL)
    b = demo.make_demo_dataset(str(tmp_path / "b"), seed=3, **SMALL)
    c = demo.make_demo_dataset(str(tmp_path / "c"), seed=4, **SMALL)
    assert tree_hash(a) == tree_hash(b) != tree_hash(c)
    # Regenerating over a demo folder replaces it; a foreign folder is refused.
    assert tree_hash(demo.make_demo_dataset(str(tmp_path / "a"), seed=3, **SMALL)) == tree_hash(a)
    foreign = tmp_path / "d" / "widget"
    foreign.mkdir(parents=True)
    (foreign / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        demo.make_demo_dataset(str(tmp_path / "d"), **SMALL)


def test_binary(tmp_path):
    out = subprocess.run([sys.executable, "-m", "grdnet_tf.bin.make_demo_data",
                          f"--output_dir={tmp_path}", "--seed=1", "--category=thing"],
                         capture_output=True, text=True, check=True, timeout=120)
    category = os.path.join(str(tmp_path), "thing")
    assert out.stdout.strip().splitlines()[-1] == category
    assert len(os.listdir(os.path.join(category, "train", "good"))) == 120
    assert len(os.listdir(os.path.join(category, "test", "good_outside_roi"))) == 20
    assert len(os.listdir(os.path.join(category, "validation", "good"))) == 100
