"""Reading files (grdnet_tf.data.io) and indexing MVTec-style folders (data.mvtec), on tiny
trees built in tmp_path; bad inputs give the promised errors."""
import itertools
import logging
import os

import numpy as np
import pytest

from grdnet_tf.data import io, mvtec
from helpers_images import random_images

_SEEDS = itertools.count()


def rgb(h=20, w=30):
    """A new random RGB image on each call."""
    return random_images((h, w, 3), next(_SEEDS), np.uint8)


def disk(h=20, w=30):
    yy, xx = np.mgrid[0:h, 0:w]
    return (((yy - h / 2) ** 2 + (xx - w / 2) ** 2) < (min(h, w) / 3) ** 2).astype(np.uint8) * 255


@pytest.fixture
def category(tmp_path, write_image):
    """train/good: 6 images of mixed formats/sizes (one grayscale, one non-square), ROIs for
    4 of them; test/good (2), test/crack (2, ground truth for 1), test/good_outside_roi (1),
    test_roi for crack."""
    root = tmp_path / "cat"
    names = ["a.png", "b.jpg", "c.bmp", "d.tiff", "e.png", "f.PNG"]
    for i, name in enumerate(names):
        image = rgb(40, 24) if name == "e.png" else rgb()
        if name == "c.bmp":
            image = image[:, :, 0]
        write_image(root / "train" / "good" / name, image)
        if i < 4:
            write_image(root / "train" / "roi" / (os.path.splitext(name)[0] + ".png"), disk())
    write_image(root / "train" / "good" / ".hidden.png", rgb())
    (root / "train" / "good" / "notes.txt").write_text("not an image")
    for name in ("000.png", "001.png"):
        write_image(root / "test" / "good" / name, rgb())
        write_image(root / "test" / "crack" / name, rgb())
    write_image(root / "ground_truth" / "crack" / "000_mask.png", disk())
    write_image(root / "test" / "good_outside_roi" / "000.png", rgb())
    write_image(root / "test_roi" / "crack" / "001.png", disk())
    return str(root)


# ------------------------------------------------------------------------------- io
def test_read_image_conversions(tmp_path, write_image):
    pixel = np.zeros((4, 6, 3), np.uint8)
    pixel[..., 0] = 200  # red in RGB
    path = write_image(tmp_path / "red.png", pixel)
    image = io.read_image(path)
    assert image.shape == (4, 6, 3) and image.dtype == np.uint8
    assert (image[..., 0] == 200).all() and (image[..., 1:] == 0).all()  # BGR -> RGB
    gray = io.read_image(path, channels=1)
    assert gray.shape == (4, 6, 1) and 50 < gray.mean() < 70  # 0.299 * 200
    rgba = np.concatenate([pixel, np.full((4, 6, 1), 7, np.uint8)], axis=-1)
    image = io.read_image(write_image(tmp_path / "rgba.png", rgba), (8, 3))
    assert image.shape == (8, 3, 3) and (image[..., 0] == 200).all()  # alpha dropped
    g = io.read_image(write_image(tmp_path / "g.bmp", np.full((5, 9), 90, np.uint8)), (4, 4))
    assert g.shape == (4, 4, 3) and (g == 90).all()
    assert io.read_image(write_image(tmp_path / "g.jpg", np.full((5, 9), 90, np.uint8)),
                         (6, 6), channels=1).shape == (6, 6, 1)
    deep = write_image(tmp_path / "deep.tif", np.full((3, 3), 65535, np.uint16))
    assert (io.read_image(deep) == 255).all()


def test_read_mask_binary_nearest(tmp_path, write_image):
    mask = np.zeros((10, 10), np.uint8)
    mask[2:6, 2:6] = 3  # any nonzero value is foreground
    path = write_image(tmp_path / "m.png", mask)
    m = io.read_mask(path)
    assert m.dtype == np.uint8 and m.shape == (10, 10) and m.sum() == 16
    m = io.read_mask(path, (20, 5))
    assert m.shape == (20, 5) and set(np.unique(m)) == {0, 1}


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n garbage"])
def test_corrupt_file_names_it(tmp_path, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    for read in (io.read_image, io.read_mask):
        with pytest.raises(io.ImageReadError, match="broken.png"):
            read(str(path))
    with pytest.raises(ValueError):  # ImageReadError is a ValueError
        io.read_image(str(tmp_path / "missing.png"))


# ------------------------------------------------------------------------- indexing
def test_index_train_rois_and_fraction_split(category, caplog):
    with caplog.at_level(logging.WARNING):
        train, val = mvtec.index_train(category, val_fraction=0.34, seed=3)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith("ROIs from ")
    assert warnings[0].endswith(": 3 of 4 training and 1 of 2 validation images have an ROI "
                                "mask; the other 2 use the whole image as ROI")
    assert len(train) == 4 and len(val) == 2  # round(6 * 0.34) = 2
    everything = sorted(s.path for s in train + val)
    assert len(set(everything)) == 6 and not {s.path for s in train} & {s.path for s in val}
    assert [os.path.basename(p) for p in everything] == ["a.png", "b.jpg", "c.bmp", "d.tiff",
                                                         "e.png", "f.PNG"]
    by_name = {os.path.basename(s.path): s for s in train + val}
    assert by_name["b.jpg"].roi_path.endswith(os.path.join("roi", "b.png"))
    assert by_name["e.png"].roi_path is None and by_name["f.PNG"].roi_path is None
    assert all(s.label == 0 and s.defect == "good" for s in train + val)
    # Seeded and deterministic; another seed holds out other images.
    assert mvtec.index_train(category, val_fraction=0.34, seed=3) == (train, val)
    others = {tuple(s.path for s in mvtec.index_train(category, val_fraction=0.34, seed=k)[1])
              for k in range(6)}
    assert len(others) > 1
    # At least one image held out; none with val_fraction=0.
    assert len(mvtec.index_train(category, val_fraction=0.01)[1]) == 1
    assert len(mvtec.index_train(category, val_fraction=0.0)[1]) == 0


def test_validation_folder_wins(category, write_image):
    write_image(os.path.join(category, "validation", "good", "v.png"), rgb())
    train, val = mvtec.index_train(category, val_fraction=0.5)
    assert len(train) == 6 and [os.path.basename(s.path) for s in val] == ["v.png"]


def test_roi_dir_from_config(category, write_image):
    os.rename(os.path.join(category, "train", "roi"), os.path.join(category, "masks"))
    train, _ = mvtec.index_train(category, val_fraction=0.0)
    assert all(s.roi_path is None for s in train)  # no folder: whole image
    train, _ = mvtec.index_train(category, roi_dir="masks", val_fraction=0.0)
    assert sum(s.roi_path is not None for s in train) == 4
    with pytest.raises(FileNotFoundError, match="nowhere"):
        mvtec.index_train(category, roi_dir="nowhere")


def test_index_test_labels_masks_rois(category, caplog):
    with caplog.at_level(logging.WARNING):
        samples = mvtec.index_test(category)
    assert [(s.defect, os.path.basename(s.path), s.label) for s in samples] == [
        ("crack", "000.png", 1), ("crack", "001.png", 1), ("good", "000.png", 0),
        ("good", "001.png", 0), ("good_outside_roi", "000.png", 0)]
    assert samples[0].mask_path.endswith(os.path.join("crack", "000_mask.png"))
    assert samples[1].mask_path is None  # missing ground truth: warned
    assert any("1 defective test images have no ground-truth" in r.getMessage()
               for r in caplog.records)
    assert samples[1].roi_path.endswith(os.path.join("test_roi", "crack", "001.png"))
    assert samples[0].roi_path is None
    assert mvtec.is_good_folder("good") and mvtec.is_good_folder("good_outside_roi")
    assert not mvtec.is_good_folder("goodish") and not mvtec.is_good_folder("crack")


# ------------------------------------------------------------------------ bad input
def test_missing_and_empty_folders(tmp_path, category):
    with pytest.raises(FileNotFoundError, match="nope"):
        mvtec.index_train(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="nope"):
        mvtec.index_test(str(tmp_path / "nope"))
    empty = tmp_path / "empty" / "train" / "good"
    empty.mkdir(parents=True)
    with pytest.raises(ValueError, match="no training images"):
        mvtec.index_train(str(tmp_path / "empty"))


def test_orphan_ground_truth(category, write_image):
    write_image(os.path.join(category, "ground_truth", "crack", "007_mask.png"), disk())
    with pytest.raises(ValueError, match="007_mask.png"):
        mvtec.index_test(category)


def test_ground_truth_without_test_folder(category, write_image):
    write_image(os.path.join(category, "ground_truth", "hole", "000_mask.png"), disk())
    with pytest.raises(ValueError, match="hole"):
        mvtec.index_test(category)


def test_load_cache_errors_and_skip(category, caplog):
    from grdnet_tf.data import pipeline  # imports TensorFlow
    train, _ = mvtec.index_train(category, val_fraction=0.0)
    cache = pipeline.load_cache(train, (16, 12), 3)
    assert cache.images.shape == (6, 16, 12, 3) and cache.images.dtype == np.uint8
    assert cache.rois.shape == (6, 16, 12, 1) and set(np.unique(cache.rois)) == {0, 1}
    assert cache.rois[4].all() and cache.rois[5].all()  # no ROI file: whole image
    assert cache.paths == [s.path for s in train]
    assert pipeline.load_cache(train, (8, 8), 1).images.shape == (6, 8, 8, 1)

    bad = train[1].path
    with open(bad, "wb") as f:
        f.write(b"not a jpeg")
    with pytest.raises(io.ImageReadError, match=os.path.basename(bad)):
        pipeline.load_cache(train, (16, 12), 3)
    with caplog.at_level(logging.WARNING):
        cache = pipeline.load_cache(train, (16, 12), 3, skip_bad_files=True)
    assert len(cache) == 5 and bad not in cache.paths
    assert any("skipped 1 of 6" in r.getMessage() for r in caplog.records)


def test_empty_roi_names_file(category, write_image):
    from grdnet_tf.data import pipeline
    roi = write_image(os.path.join(category, "train", "roi", "a.png"),
                      np.zeros((20, 30), np.uint8))
    train, _ = mvtec.index_train(category, val_fraction=0.0)
    with pytest.raises(ValueError, match="a.png.*empty"):
        pipeline.load_cache(train, (16, 12), 3)
    assert os.path.exists(roi)
