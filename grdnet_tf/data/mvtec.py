"""Indexing an MVTec-AD-style category folder (no pixels are read here).

Layout of ``<category>``::

    train/good/*                       normal training images
    train/roi/<stem>.*                 optional ROI mask per training image (white = ROI)
    validation/good/*                  optional normal validation images
    validation/roi/<stem>.*            optional ROIs of those
    test/<defect|good|good_*>/*        test images
    ground_truth/<defect>/<stem>_mask.*  ground truth of defective test images
    test_roi/<folder>/<stem>.*         optional ROI per test image (metrics inside the ROI)

Test folders named ``good`` or ``good_<anything>`` (e.g. ``good_outside_roi``: defects that
lie outside the ROI only, so the part is acceptable) hold normal images, label 0.
"""
import collections
import dataclasses
import os

import numpy as np
from absl import logging

from grdnet_tf.data import io

GOOD = "good"
MASK_SUFFIX = "_mask"


@dataclasses.dataclass(frozen=True)
class Sample:
    """One image of a category.

    Args:
      path: image file.
      label: 0 good, 1 anomalous.
      defect: name of the test subfolder ("good" for training images).
      mask_path: ground-truth mask of a defective test image; None for good images or
        when the ground truth is missing.
      roi_path: ROI mask file; None means the whole image.
    """
    path: str
    label: int = 0
    defect: str = GOOD
    mask_path: str | None = None
    roi_path: str | None = None


def is_good_folder(name) -> bool:
    """True for ``good`` and ``good_<anything>`` (e.g. ``good_outside_roi``): label 0."""
    return name == GOOD or name.startswith(GOOD + "_")


def list_images(folder) -> list[str]:
    """Sorted image files (``io.IMAGE_EXTENSIONS``, any case) directly inside ``folder``."""
    return sorted(os.path.join(folder, n) for n in os.listdir(folder)
                  if io.is_image_file(n) and os.path.isfile(os.path.join(folder, n)))


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def _by_stem(folder, suffix=""):
    """{stem without suffix: path} of the image files in ``folder``; duplicates are errors."""
    found = {}
    for path in list_images(folder):
        stem = _stem(path)
        if suffix:
            if not stem.endswith(suffix):
                continue
            stem = stem[:-len(suffix)]
        if stem in found:
            raise ValueError(f"two files with the stem {stem!r} in {folder}: "
                             f"{found[stem]} and {path}; keep one")
        found[stem] = path
    return found


def _require_dir(path, what):
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} not found: {path}")


def _attach_rois(paths, roi_folder, split_name):
    """Samples for ``paths`` with the ROI of the same stem from ``roi_folder`` (if any)."""
    if roi_folder is None:
        return [Sample(path=p) for p in paths]
    rois = _by_stem(roi_folder)
    samples = [Sample(path=p, roi_path=rois.get(_stem(p))) for p in paths]
    missing = sum(s.roi_path is None for s in samples)
    if missing:
        logging.warning("%d of %d %s images have no ROI mask in %s; they use the whole "
                        "image as ROI", missing, len(samples), split_name, roi_folder)
    return samples


def _resolve_roi_dir(category_dir, roi_dir):
    if roi_dir:
        for candidate in (roi_dir, os.path.join(category_dir, roi_dir)):
            if os.path.isdir(candidate):
                return candidate
        raise FileNotFoundError(f"ROI folder not found: data.roi_dir={roi_dir!r} (looked "
                                f"for it as given and inside {category_dir})")
    default = os.path.join(category_dir, "train", "roi")
    return default if os.path.isdir(default) else None


def index_train(category_dir, roi_dir="", val_fraction=0.1, seed=0):
    """Training and validation samples of a category (all label 0).

    Validation (**Decision**): if ``<category>/validation/good`` exists and holds images, it
    is the validation set (ROIs from ``validation/roi`` when present) and every image of
    ``train/good`` trains. Otherwise a seeded random ``val_fraction`` of ``train/good``
    (rounded, at least 1 when there are >= 2 images and val_fraction > 0, never all) is held
    out; the two lists are disjoint. The test split is never used.

    Args:
      category_dir: the category folder.
      roi_dir: ROI folder for training images; "" means ``<category>/train/roi`` when it
        exists, else whole-image ROIs. A relative path is tried as given, then inside
        ``category_dir``.
      val_fraction: held-out fraction in [0, 1] when there is no validation folder.
      seed: seed of the held-out choice (config.seed).
    Returns:
      (train, validation): lists of :class:`Sample` sorted by path.
    Raises:
      FileNotFoundError: missing category, train/good or roi_dir folder.
      ValueError: no training images; duplicate stems in the ROI folder.
    """
    _require_dir(category_dir, "category folder")
    train_dir = os.path.join(category_dir, "train", GOOD)
    _require_dir(train_dir, "training folder")
    paths = list_images(train_dir)
    if not paths:
        raise ValueError(f"no training images ({', '.join(io.IMAGE_EXTENSIONS)}) in "
                         f"{train_dir}")
    roi_folder = _resolve_roi_dir(category_dir, roi_dir)
    if roi_folder is None:
        logging.info("no ROI folder for %s: all training images use the whole image as ROI",
                     category_dir)
    samples = _attach_rois(paths, roi_folder, "training")

    val_dir = os.path.join(category_dir, "validation", GOOD)
    val_paths = list_images(val_dir) if os.path.isdir(val_dir) else []
    if val_paths:
        val_roi = os.path.join(category_dir, "validation", "roi")
        validation = _attach_rois(val_paths, val_roi if os.path.isdir(val_roi) else None,
                                  "validation")
        logging.info("validation: %d images from %s; %d training images", len(validation),
                     val_dir, len(samples))
        return samples, validation

    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction={val_fraction} must lie in [0, 1]")
    n = len(samples)
    n_val = 0
    if n >= 2 and val_fraction > 0:
        n_val = min(n - 1, max(1, int(round(n * val_fraction))))
    held_out = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    train = [s for i, s in enumerate(samples) if i not in held_out]
    validation = [s for i, s in enumerate(samples) if i in held_out]
    logging.info("validation: %d of %d train/good images held out (seed %d)", n_val, n, seed)
    return train, validation


def index_test(category_dir) -> list[Sample]:
    """Test samples sorted by (folder, file name).

    Labels: 0 for :func:`is_good_folder` folders, else 1. Ground truth is
    ``ground_truth/<defect>/<stem>_mask.<ext>``; a defective image without one gets
    ``mask_path=None`` (one warning with the count). ROIs come from
    ``test_roi/<folder>/<stem>.<ext>`` when present.

    Raises:
      FileNotFoundError: missing category or test folder.
      ValueError: no test images; a ground-truth mask whose stem matches no test image.
    """
    _require_dir(category_dir, "category folder")
    test_dir = os.path.join(category_dir, "test")
    _require_dir(test_dir, "test folder")
    gt_root = os.path.join(category_dir, "ground_truth")
    roi_root = os.path.join(category_dir, "test_roi")
    folders = sorted(d for d in os.listdir(test_dir)
                     if os.path.isdir(os.path.join(test_dir, d)) and not d.startswith("."))
    samples, missing_gt = [], collections.Counter()
    for folder in folders:
        paths = list_images(os.path.join(test_dir, folder))
        gt_dir, roi_dir = os.path.join(gt_root, folder), os.path.join(roi_root, folder)
        masks = _by_stem(gt_dir, MASK_SUFFIX) if os.path.isdir(gt_dir) else {}
        rois = _by_stem(roi_dir) if os.path.isdir(roi_dir) else {}
        stems = {_stem(p) for p in paths}
        orphans = sorted(set(masks) - stems)
        if orphans:
            raise ValueError(f"ground-truth mask {masks[orphans[0]]} matches no test image in "
                             f"{os.path.join(test_dir, folder)} ({len(orphans)} such masks)")
        label = 0 if is_good_folder(folder) else 1
        for path in paths:
            mask_path = masks.get(_stem(path)) if label else None
            if label and mask_path is None:
                missing_gt[folder] += 1
            samples.append(Sample(path=path, label=label, defect=folder, mask_path=mask_path,
                                  roi_path=rois.get(_stem(path))))
    if os.path.isdir(gt_root):
        for folder in sorted(os.listdir(gt_root)):
            gt_dir = os.path.join(gt_root, folder)
            if (os.path.isdir(gt_dir) and folder not in folders
                    and _by_stem(gt_dir, MASK_SUFFIX)):
                raise ValueError(f"ground-truth folder {gt_dir} has no test folder "
                                 f"{os.path.join(test_dir, folder)}")
    if not samples:
        raise ValueError(f"no test images in {test_dir}")
    if missing_gt:
        logging.warning("%d defective test images have no ground-truth mask (%s); they count "
                        "for image metrics only", sum(missing_gt.values()),
                        ", ".join(f"{k}: {v}" for k, v in sorted(missing_gt.items())))
    return samples
