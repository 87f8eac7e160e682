"""Indexing a category folder in one of three layouts (no pixels are read here).

``mvtec`` (MVTec AD)::

    train/good/*                       normal training images
    train/roi/<stem>.*                 optional ROI mask per training image (white = ROI)
    validation/good/*                  optional normal validation images
    validation/roi/<stem>.*            optional ROIs of those
    test/<defect|good|good_*>/*        test images
    ground_truth/<defect>/<stem>_mask.*  ground truth of defective test images
    test_roi/<folder>/<stem>.*         optional ROI per test image (metrics inside the ROI)

``mvtec3d`` (the native MVTec 3D-AD layout; the ``xyz/`` point clouds are ignored)::

    train/good/rgb/*, validation/good/rgb/*, test/<folder>/rgb/*
    test/<defect>/gt/<stem>.*          ground truth (same stem as the rgb image)
    train/roi, validation/roi, test_roi/<folder>   optional ROIs, as in ``mvtec``

``folder`` (a plain folder per class, as anomalib's ``Folder`` datamodule takes; the
folder names are the ``data.folder.*`` config keys)::

    good/*                             normal images: training, validation (a seeded
                                       data.val_fraction, or data.folder.val_dir) and test
                                       (data.folder.normal_test_dir, or a seeded
                                       data.folder.normal_test_fraction held out)
    <defect>/*                         one or more defect folders (data.folder.abnormal_dirs,
                                       default: every other folder with images)
    <mask_dir>/[<defect>/]<stem>[_mask].*   optional ground truth (data.folder.mask_dir)

``auto`` recognises the three (``train/good/rgb`` -> mvtec3d, ``train/good`` -> mvtec, a
``data.folder.normal_dir`` folder with images -> folder); anything else is an error that
lists the accepted layouts and what was found. ROIs: ``data.roi_dir`` (per image, by stem)
or ``data.roi_path`` (one file for every image), relative to the category folder; see
grdnet_tf/config.py. Test folders named ``good`` or ``good_<anything>`` (e.g.
``good_outside_roi``: defects that lie outside the ROI only, so the part is acceptable) hold
normal images, label 0.
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


def _by_stem(folder, suffix="", optional=False):
    """{stem without suffix: path} of the image files in ``folder``; duplicates are errors.
    Files without ``suffix`` are skipped, or with ``optional`` kept under their stem."""
    found = {}
    for path in list_images(folder):
        stem = _stem(path)
        if suffix and stem.endswith(suffix):
            stem = stem[:-len(suffix)]
        elif suffix and not optional:
            continue
        if stem in found:
            raise ValueError(f"two files with the stem {stem!r} in {folder}: "
                             f"{found[stem]} and {path}; keep one")
        found[stem] = path
    return found


def _require_dir(path, what):
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} not found: {path}")


LAYOUT_HELP = ("accepted layouts: mvtec (train/good/*, test/<defect>/*, "
               "ground_truth/<defect>/<stem>_mask.*), mvtec3d (train/good/rgb/*, "
               "test/<defect>/rgb/* and gt/*), folder (data.folder.normal_dir, default "
               "good/, and defect folders; data.folder.*); set --config.data.layout")


@dataclasses.dataclass(frozen=True)
class FolderLayout:
    """The ``data.folder.*`` keys of the plain folder layout (see grdnet_tf/config.py)."""
    normal_dir: str = GOOD
    abnormal_dirs: str = ""
    normal_test_dir: str = ""
    normal_test_fraction: float = 0.2
    val_dir: str = ""
    mask_dir: str = ""

    @classmethod
    def from_config(cls, folder):
        return cls(**{f.name: folder[f.name] for f in dataclasses.fields(cls)})


def config_kwargs(config, test=False) -> dict:
    """The keywords of :func:`index_train` (or with `test`, :func:`index_test`) from a run
    config: layout, ROIs, split."""
    data = config.data
    kwargs = {"layout": data.layout, "roi_dir": data.roi_dir, "roi_path": data.roi_path,
              "folder": FolderLayout.from_config(data.folder), "seed": int(config.seed)}
    if not test:
        kwargs["val_fraction"] = data.val_fraction
    return kwargs


def _inside(category_dir, path):
    """A path of a data.* key: relative to the category folder, absolute as given."""
    return path if os.path.isabs(path) else os.path.join(category_dir, path)


def _has_images(folder):
    return os.path.isdir(folder) and bool(list_images(folder))


def detect_layout(category_dir, layout="auto", folder=None) -> str:
    """The layout of ``category_dir``: ``layout`` itself, or for "auto" the one recognised.

    Raises FileNotFoundError for a missing folder, ValueError for an unknown layout (the
    message lists the accepted layouts and the folder's entries).
    """
    _require_dir(category_dir, "category folder")
    if layout != "auto":
        return layout
    folder = folder or FolderLayout()
    if os.path.isdir(os.path.join(category_dir, "train", GOOD, "rgb")):
        return "mvtec3d"
    if os.path.isdir(os.path.join(category_dir, "train", GOOD)):
        return "mvtec"
    if _has_images(_inside(category_dir, folder.normal_dir)):
        return "folder"
    entries = sorted(n + ("/" if os.path.isdir(os.path.join(category_dir, n)) else "")
                     for n in os.listdir(category_dir) if not n.startswith("."))
    shown = ", ".join(entries[:12]) + (f", ... ({len(entries)} entries)"
                                       if len(entries) > 12 else "")
    raise ValueError(f"{category_dir}: unknown data layout (found: {shown or 'nothing'}); "
                     f"{LAYOUT_HELP}")


def _resolve_dir(category_dir, path, key):
    """An existing folder named by config key `key` (relative to the category folder)."""
    resolved = _inside(category_dir, path)
    if not os.path.isdir(resolved):
        raise FileNotFoundError(f"folder not found: {key}={path!r} -> {resolved} (a relative "
                                f"path is inside --data_dir; give an absolute path for "
                                f"another place)")
    return resolved


def _resolve_roi_path(category_dir, roi_path):
    if not roi_path:
        return None
    resolved = _inside(category_dir, roi_path)
    if not os.path.isfile(resolved):
        raise FileNotFoundError(f"ROI file not found: data.roi_path={roi_path!r} -> "
                                f"{resolved} (a relative path is inside --data_dir)")
    return resolved


def _split_dirs(category_dir, layout):
    """(training image folder, validation image folder or None, default training ROI
    folder, default validation ROI folder) of an MVTec layout."""
    sub = ("rgb",) if layout == "mvtec3d" else ()
    train_dir = os.path.join(category_dir, "train", GOOD, *sub)
    val_dir = os.path.join(category_dir, "validation", GOOD, *sub)
    return (train_dir, val_dir if os.path.isdir(val_dir) else None,
            os.path.join(category_dir, "train", "roi"),
            os.path.join(category_dir, "validation", "roi"))


def _folder_normals(category_dir, folder, seed):
    """(training normals, test normals) of the folder layout: the test normals are
    data.folder.normal_test_dir, or a seeded share of normal_dir held out."""
    normal_dir = _resolve_dir(category_dir, folder.normal_dir, "data.folder.normal_dir")
    paths = list_images(normal_dir)
    if folder.normal_test_dir:
        return paths, list_images(_resolve_dir(category_dir, folder.normal_test_dir,
                                               "data.folder.normal_test_dir"))
    n_test = _held_out_count(len(paths), folder.normal_test_fraction)
    # Its own seed stream: not the validation draw (seed) of index_train.
    held_out = set(np.random.default_rng([seed, 1]).permutation(len(paths))[:n_test].tolist())
    return ([p for i, p in enumerate(paths) if i not in held_out],
            [p for i, p in enumerate(paths) if i in held_out])


def _held_out_count(n, fraction):
    """round(n * fraction), at least 1 when n >= 2 and fraction > 0, never all."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"held-out fraction {fraction} must lie in [0, 1]")
    if n < 2 or fraction <= 0:
        return 0
    return min(n - 1, max(1, int(round(n * fraction))))


def _attach_rois(paths, rois):
    """Samples for ``paths`` with the ROI of the same stem from ``rois`` ({stem: path}),
    or with the one ROI file ``rois`` (a path)."""
    if isinstance(rois, str):
        return [Sample(path=p, roi_path=rois) for p in paths]
    return [Sample(path=p, roi_path=rois.get(_stem(p))) for p in paths]


def samples_with_roi(paths, roi, what="--roi"):
    """Samples (label 0) for image ``paths`` with an ROI from ``roi``: one mask file for
    every image (a fixed camera's template), or a folder of masks named by image stem
    (``<stem>.*``, as grdnet-roi writes them). "" or None: no ROI.

    Raises:
      FileNotFoundError: ``roi`` does not exist.
      ValueError: the folder lacks the mask of some image (the first ones are named), or
        holds two masks of one stem.
    """
    if not roi:
        return [Sample(path=p) for p in paths]
    if os.path.isfile(roi):
        return _attach_rois(paths, roi)
    if not os.path.isdir(roi):
        raise FileNotFoundError(f"{what}={roi}: no such mask file or folder")
    rois = _by_stem(roi)
    missing = [p for p in paths if _stem(p) not in rois]
    if missing:
        raise ValueError(f"{what}={roi} has no mask <stem>.* for {len(missing)} of "
                         f"{len(paths)} image(s), e.g. {', '.join(missing[:3])}; write them "
                         f"(grdnet-roi) or pass one mask file for every image")
    return _attach_rois(paths, rois)


def _log_roi_counts(train, validation, source):
    """The training log's ROI line: how many images have an ROI and how many do not
    (a warning when some lack one although ROIs were found)."""
    if source is None:
        logging.info("ROIs: none (no data.roi_dir, data.roi_path or train/roi): all %d "
                     "training and %d validation images use the whole image as ROI",
                     len(train), len(validation))
        return
    with_t = sum(s.roi_path is not None for s in train)
    with_v = sum(s.roi_path is not None for s in validation)
    missing = len(train) + len(validation) - with_t - with_v
    log = logging.warning if missing else logging.info
    log("ROIs from %s: %d of %d training and %d of %d validation images have an ROI mask%s",
        source, with_t, len(train), with_v, len(validation),
        f"; the other {missing} use the whole image as ROI" if missing else "")


def index_train(category_dir, roi_dir="", val_fraction=0.1, seed=0, layout="auto",
                roi_path="", folder=None):
    """Training and validation samples of a category (all label 0).

    Validation (**Decision**): if the layout has validation images (``validation/good``,
    or data.folder.val_dir), they are the validation set and every training image trains.
    Otherwise a seeded random ``val_fraction`` of the training images (rounded, at least 1
    when there are >= 2 images and val_fraction > 0, never all) is held out; the two lists
    are disjoint. The test split (and in the folder layout the held-out test normals) is
    never used.

    ROIs (**Decision**): ``roi_path`` gives every image that one ROI file. Else
    ``roi_dir`` (or, when "", ``train/roi`` and ``validation/roi`` of the MVTec layouts)
    holds one ROI per image by stem, for validation images too; when a validation image's
    stem also names a training image, its ROI must be in ``<roi_dir>/validation/``. Paths
    are relative to ``category_dir``. One log line counts the images with and without ROI.

    Args:
      category_dir: the category folder.
      roi_dir, roi_path: data.roi_dir, data.roi_path.
      val_fraction: held-out fraction in [0, 1] when there are no validation images.
      seed: seed of the held-out choices (config.seed).
      layout: data.layout ("auto" detects it, :func:`detect_layout`).
      folder: :class:`FolderLayout` (data.folder.*) of the folder layout.
    Returns:
      (train, validation): lists of :class:`Sample` sorted by path.
    Raises:
      FileNotFoundError: missing category, training, ROI folder or ROI file.
      ValueError: no training images; duplicate or ambiguous ROI stems; unknown layout.
    """
    folder = folder or FolderLayout()
    layout = detect_layout(category_dir, layout, folder)
    if layout == "folder":
        paths, _ = _folder_normals(category_dir, folder, seed)
        train_dir = _inside(category_dir, folder.normal_dir)
        val_dir = (_resolve_dir(category_dir, folder.val_dir, "data.folder.val_dir")
                   if folder.val_dir else None)
        default_rois = (None, None)
    else:
        train_dir, val_dir, *default_rois = _split_dirs(category_dir, layout)
        _require_dir(train_dir, "training folder")
        paths = list_images(train_dir)
    if not paths:
        raise ValueError(f"no training images ({', '.join(io.IMAGE_EXTENSIONS)}) in "
                         f"{train_dir}")
    val_paths = list_images(val_dir) if val_dir else []

    single = _resolve_roi_path(category_dir, roi_path)
    if single:
        train_rois = val_rois = single
        source = f"data.roi_path {single}"
    elif roi_dir:
        train_folder = _resolve_dir(category_dir, roi_dir, "data.roi_dir")
        train_rois = _by_stem(train_folder)
        own = os.path.join(train_folder, "validation")
        if os.path.isdir(own):
            val_rois = _by_stem(own)
        else:
            shared = sorted({_stem(p) for p in val_paths} & {_stem(p) for p in paths})
            if shared:
                raise ValueError(
                    f"data.roi_dir={roi_dir!r}: validation and training images share names "
                    f"(e.g. {shared[0]!r}), so their ROIs cannot share one folder; put the "
                    f"validation ROIs in {own}")
            val_rois = train_rois
        source = train_folder
    else:
        train_folder, val_folder = default_rois
        train_rois = _by_stem(train_folder) if train_folder and os.path.isdir(
            train_folder) else {}
        val_rois = _by_stem(val_folder) if val_folder and os.path.isdir(val_folder) else {}
        source = train_folder if train_rois else (val_folder if val_rois else None)
    samples = _attach_rois(paths, train_rois)

    if val_paths:
        validation = _attach_rois(val_paths, val_rois)
        logging.info("validation: %d images from %s; %d training images", len(validation),
                     val_dir, len(samples))
        _log_roi_counts(samples, validation, source)
        return samples, validation

    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction={val_fraction} must lie in [0, 1]")
    n = len(samples)
    n_val = _held_out_count(n, val_fraction)
    held_out = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    train = [s for i, s in enumerate(samples) if i not in held_out]
    validation = [s for i, s in enumerate(samples) if i in held_out]
    logging.info("validation: %d of %d training images held out (seed %d)", n_val, n, seed)
    _log_roi_counts(train, validation, source)
    return train, validation


@dataclasses.dataclass(frozen=True)
class _TestFolder:
    """One test folder: its name (the defect), images, masks and ROIs by stem."""
    name: str
    paths: list
    masks: dict
    rois: dict


def _mvtec_test_folders(category_dir, layout):
    test_dir = os.path.join(category_dir, "test")
    _require_dir(test_dir, "test folder")
    gt_root = os.path.join(category_dir, "ground_truth")
    roi_root = os.path.join(category_dir, "test_roi")
    names = sorted(d for d in os.listdir(test_dir)
                   if os.path.isdir(os.path.join(test_dir, d)) and not d.startswith("."))
    folders = []
    for name in names:
        if layout == "mvtec3d":
            image_dir = os.path.join(test_dir, name, "rgb")
            gt_dir = os.path.join(test_dir, name, "gt")
            masks = _by_stem(gt_dir) if os.path.isdir(gt_dir) else {}
        else:
            image_dir = os.path.join(test_dir, name)
            gt_dir = os.path.join(gt_root, name)
            masks = _by_stem(gt_dir, MASK_SUFFIX) if os.path.isdir(gt_dir) else {}
        paths = list_images(image_dir) if os.path.isdir(image_dir) else []
        orphans = sorted(set(masks) - {_stem(p) for p in paths})
        if orphans:
            raise ValueError(f"ground-truth mask {masks[orphans[0]]} matches no test image in "
                             f"{image_dir} ({len(orphans)} such masks)")
        roi_dir = os.path.join(roi_root, name)
        folders.append(_TestFolder(name, paths, masks,
                                   _by_stem(roi_dir) if os.path.isdir(roi_dir) else {}))
    if layout == "mvtec" and os.path.isdir(gt_root):
        for name in sorted(os.listdir(gt_root)):
            gt_dir = os.path.join(gt_root, name)
            if (os.path.isdir(gt_dir) and name not in names
                    and _by_stem(gt_dir, MASK_SUFFIX)):
                raise ValueError(f"ground-truth folder {gt_dir} has no test folder "
                                 f"{os.path.join(test_dir, name)}")
    return folders


def _folder_test_folders(category_dir, folder, seed, roi_dir):
    _, normal_test = _folder_normals(category_dir, folder, seed)
    used = {os.path.normpath(_inside(category_dir, d)) for d in
            (folder.normal_dir, folder.normal_test_dir, folder.val_dir, folder.mask_dir,
             roi_dir) if d}
    if folder.abnormal_dirs:
        names = [d.strip() for d in folder.abnormal_dirs.split(",") if d.strip()]
        dirs = [_resolve_dir(category_dir, d, "data.folder.abnormal_dirs") for d in names]
    else:
        names = sorted(d for d in os.listdir(category_dir) if not d.startswith(".")
                       and os.path.normpath(os.path.join(category_dir, d)) not in used
                       and _has_images(os.path.join(category_dir, d)))
        dirs = [os.path.join(category_dir, d) for d in names]
    mask_root = (_resolve_dir(category_dir, folder.mask_dir, "data.folder.mask_dir")
                 if folder.mask_dir else None)
    folders = [_TestFolder(GOOD, normal_test, {}, {})]
    for name, image_dir in zip(names, dirs):
        name = os.path.basename(os.path.normpath(name))
        masks = {}
        if mask_root:
            own = os.path.join(mask_root, name)
            masks = _by_stem(own if os.path.isdir(own) else mask_root, MASK_SUFFIX,
                             optional=True)
        folders.append(_TestFolder(name, list_images(image_dir), masks, {}))
    return folders


def index_test(category_dir, layout="auto", roi_path="", folder=None, seed=0,
               roi_dir="") -> list[Sample]:
    """Test samples sorted by (folder, file name).

    Labels: 0 for :func:`is_good_folder` folders (in the folder layout: the normal test
    images, as "good"), else 1. Ground truth by layout (module docstring); a defective
    image without one gets ``mask_path=None`` (one warning with the count). ROIs come from
    ``test_roi/<folder>/<stem>.<ext>`` (MVTec layouts) when present, else from
    ``roi_path`` (data.roi_path, one ROI for every image) when given. The arguments after
    ``category_dir`` are those of :func:`index_train` (``config_kwargs(config, test=True)``;
    ``roi_dir`` is only excluded from the automatic defect folders of the folder layout).

    Raises:
      FileNotFoundError: missing category or test folder.
      ValueError: no test images; a ground-truth mask whose stem matches no test image;
        an unknown layout.
    """
    folder = folder or FolderLayout()
    layout = detect_layout(category_dir, layout, folder)
    single = _resolve_roi_path(category_dir, roi_path)
    if layout == "folder":
        folders = _folder_test_folders(category_dir, folder, seed, roi_dir)
    else:
        folders = _mvtec_test_folders(category_dir, layout)
    samples, missing_gt = [], collections.Counter()
    for test in sorted(folders, key=lambda f: f.name):
        label = 0 if is_good_folder(test.name) else 1
        for path in test.paths:
            mask_path = test.masks.get(_stem(path)) if label else None
            if label and mask_path is None:
                missing_gt[test.name] += 1
            samples.append(Sample(path=path, label=label, defect=test.name,
                                  mask_path=mask_path,
                                  roi_path=test.rois.get(_stem(path), single)))
    if not samples:
        raise ValueError(f"no test images in {category_dir} ({layout} layout)")
    if missing_gt:
        logging.warning("%d defective test images have no ground-truth mask (%s); they count "
                        "for image metrics only", sum(missing_gt.values()),
                        ", ".join(f"{k}: {v}" for k, v in sorted(missing_gt.items())))
    return samples
