"""ROI masks without drawing them: a foreground rule or one template mask (``grdnet-roi``).

GRD-Net restricts the segmentator's focal loss to a region of interest (ROI, white = the
object whose defects matter). This module writes the ROI files that
:mod:`grdnet_tf.data.mvtec` reads, under ``output_root`` (the category folder itself unless
another folder is given)::

    train/roi/<stem>.png            for train/good/<stem>.*
    validation/roi/<stem>.png       for validation/good/<stem>.*
    test_roi/<folder>/<stem>.png    for test/<folder>/<stem>.*

Each mask is an 8-bit grey PNG, 0 outside and 255 inside, of its image's size. A mask is
either computed by a :class:`ForegroundRule` or copied from one template mask (fixed-camera
lines), resized per image with exact nearest neighbour.

The foreground rule, in this order (radii and sigma in pixels of the native image):

1-3. one or more ``features`` that are high on the object, from the image blurred with a
   Gaussian of ``blur_sigma`` (0: none); foreground = the pixels where any of them exceeds
   its ``threshold`` level: Otsu or triangle (per image and per feature), or ``fixed`` (the
   feature value ``level``, for an object that fills most of the image, whose histogram has
   no second mode):

   - ``grey``: the grey value (RGB luma) by ``polarity``: ``bright`` the grey value,
     ``dark`` 255 - grey, ``auto`` is ``bright`` when the median of the blurred image's
     1-px border lies below the image's Otsu level, else ``dark``;
   - ``border_distance``: the Euclidean distance (clipped to 255) of each blurred pixel's
     colour from the median colour of the 1-px border, for an object that is partly
     brighter and partly darker than a background that touches the image border;
   - ``local_contrast``: the grey value's standard deviation in a Gaussian window of
     ``blur_sigma`` (> 0), for a textured object on a smooth background;
4. opening of radius ``open_radius`` (removes specks), then closing of ``close_radius``
   (bridges gaps), elliptical structuring elements;
5. the ``keep`` largest 8-connected components (0 keeps all);
6. ``convex_hull``: each kept component becomes its convex hull (convex parts: a tire,
   a bottle, a tile), else ``fill_holes``: background regions that do not reach the image
   border become ROI;
7. dilation by ``margin``.

:func:`write_rois` never replaces an existing mask unless asked, computes every new mask
before writing any (a bad image or an empty mask stops it with nothing written), writes
each file atomically, and writes a preview sheet per split (image with the outside tinted
and the ROI outlined) so the rule can be checked at a glance. numpy + OpenCV only: an
offline tool, not part of the tf.data pipeline.
"""
import collections
import dataclasses
import json
import os

import cv2
import numpy as np
from absl import logging

from grdnet_tf import choices, file_modes
from grdnet_tf.data import io, mvtec
from grdnet_tf.evaluation import plots

OUTSIDE_RGB = (255, 0, 0)   # tint of the outside of the ROI in previews
OUTLINE_RGB = (0, 255, 0)   # ROI contour in previews
TILE = 192                  # preview tile side (pixels)
PREVIEW_COLUMNS = 6
SUMMARY = "roi.json"        # written next to the previews


@dataclasses.dataclass(frozen=True)
class ForegroundRule:
    """Parameters of the foreground rule (see the module docstring for the steps).

    Args:
      features: one or more of "grey", "border_distance", "local_contrast"
        (choices.ROI_FEATURES); their foregrounds are united.
      polarity: "auto", "bright" or "dark" (choices.ROI_POLARITIES); feature "grey" only.
      threshold: "otsu", "triangle" or "fixed" (choices.ROI_THRESHOLDS).
      level: the feature value of threshold "fixed", in [0, 255).
      blur_sigma: Gaussian sigma of the feature, >= 0 (> 0 for local_contrast).
      open_radius: opening radius, >= 0 (0: none).
      close_radius: closing radius, >= 0 (0: none).
      keep: number of largest components kept, >= 0 (0: all).
      fill_holes: fill background regions enclosed by the ROI.
      convex_hull: replace each kept component by its convex hull (implies filled holes).
      margin: dilation radius of the result, >= 0.
    """
    features: tuple = ("grey",)
    polarity: str = "auto"
    threshold: str = "otsu"
    level: float = 0.0
    blur_sigma: float = 2.0
    open_radius: int = 0
    close_radius: int = 0
    keep: int = 1
    fill_holes: bool = True
    convex_hull: bool = False
    margin: int = 0

    def validate(self):
        """Raises ValueError naming the first bad parameter."""
        if not self.features:
            raise ValueError("feature: give at least one of " + ", ".join(choices.ROI_FEATURES))
        for feature in self.features:
            choices.check("feature", feature, choices.ROI_FEATURES)
        choices.check("polarity", self.polarity, choices.ROI_POLARITIES)
        choices.check("threshold", self.threshold, choices.ROI_THRESHOLDS)
        if not 0 <= self.level < 255:
            raise ValueError(f"level={self.level!r} must lie in [0, 255)")
        if not self.blur_sigma >= 0:
            raise ValueError(f"blur_sigma={self.blur_sigma!r} must be >= 0")
        if "local_contrast" in self.features and not self.blur_sigma > 0:
            raise ValueError("feature=local_contrast needs blur_sigma > 0 (its window)")
        for name in ("open_radius", "close_radius", "keep", "margin"):
            value = getattr(self, name)
            if int(value) != value or value < 0:
                raise ValueError(f"{name}={value!r} must be an integer >= 0")
        return self


def _border(array):
    """The 1-px frame of an [H, W, ...] array as [2H + 2W - 4, ...]."""
    return np.concatenate([array[0], array[-1], array[1:-1, 0], array[1:-1, -1]], axis=0)


def _blur(array, sigma):
    return cv2.GaussianBlur(array, (0, 0), sigma) if sigma > 0 else array


def _level(feature, method, level=0.0):
    if method == "fixed":
        return level
    flag = cv2.THRESH_OTSU if method == "otsu" else cv2.THRESH_TRIANGLE
    level, _ = cv2.threshold(feature, 0, 255, cv2.THRESH_BINARY | flag)
    return level


def _to_uint8(values):
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def foreground_feature(image, feature="grey", polarity="auto", blur_sigma=2.0):
    """uint8 [H, W] feature that is high on the object (steps 1-3 of the rule).

    Args:
      image: uint8 [H, W, 3] RGB, [H, W, 1] or [H, W] grey.
    """
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if feature == "border_distance":
        colour = _blur(image.astype(np.float32), blur_sigma)
        if colour.ndim == 2:
            colour = colour[:, :, None]
        return _to_uint8(np.linalg.norm(colour - np.median(_border(colour), axis=0), axis=-1))
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    if feature == "local_contrast":
        grey = grey.astype(np.float32)
        variance = _blur(grey * grey, blur_sigma) - _blur(grey, blur_sigma) ** 2
        return _to_uint8(np.sqrt(np.maximum(variance, 0.0)))
    grey = _blur(grey, blur_sigma)
    if polarity == "auto":
        polarity = "bright" if np.median(_border(grey)) < _level(grey, "otsu") else "dark"
    return grey if polarity == "bright" else 255 - grey


def _disk(radius):
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def largest_components(mask, keep):
    """uint8 {0, 1} mask of the ``keep`` largest 8-connected components (0: all); equal
    areas are ranked by label (scan order)."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if keep == 0 or count - 1 <= keep:
        return mask
    areas = stats[1:, cv2.CC_STAT_AREA]
    kept = 1 + np.argsort(-areas, kind="stable")[:keep]
    return np.isin(labels, kept).astype(np.uint8)


def fill_holes(mask):
    """uint8 {0, 1} mask with every background region that does not reach the image border
    (4-connected) set to 1."""
    padded = np.pad(1 - mask, 1, constant_values=1)
    _, labels = cv2.connectedComponents(padded, connectivity=4)
    return (labels[1:-1, 1:-1] != labels[0, 0]).astype(np.uint8)


def convex_hulls(mask):
    """uint8 {0, 1} mask with each 8-connected component replaced by its convex hull."""
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros_like(mask)
    cv2.fillPoly(out, [cv2.convexHull(c) for c in contours], 1)
    return out


def foreground_roi(image, rule: ForegroundRule):
    """uint8 {0, 1} [H, W] ROI of one image by the foreground rule (may be all zero)."""
    mask = np.zeros(image.shape[:2], np.uint8)
    for name in rule.features:
        feature = foreground_feature(image, name, rule.polarity, rule.blur_sigma)
        mask |= (feature > _level(feature, rule.threshold, rule.level)).astype(np.uint8)
    if rule.open_radius:
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _disk(rule.open_radius))
    if rule.close_radius:
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _disk(rule.close_radius))
    mask = largest_components(mask, rule.keep)
    if rule.convex_hull:
        mask = convex_hulls(mask)
    elif rule.fill_holes:
        mask = fill_holes(mask)
    if rule.margin:
        mask = cv2.dilate(mask, _disk(rule.margin))
    return mask


def template_roi(template, shape):
    """The {0, 1} ``template`` resized to ``shape`` = (height, width), exact nearest."""
    if template.shape[:2] == tuple(shape[:2]):
        return template
    return cv2.resize(template, (int(shape[1]), int(shape[0])),
                      interpolation=cv2.INTER_NEAREST_EXACT)


@dataclasses.dataclass(frozen=True)
class Job:
    """One image and its ROI file.

    Args:
      image_path: the image.
      mask_path: its ROI file: the existing one (``existing``) or where the new one goes.
      group: "train", "validation" or "test/<folder>".
      existing: the mask exists already and is kept.
    """
    image_path: str
    mask_path: str
    group: str
    existing: bool = False


def _sources(category_dir, output_root, splits):
    """[(group, image folder, ROI folder)] of the requested splits."""
    train_dir = os.path.join(category_dir, "train", mvtec.GOOD)
    if not os.path.isdir(train_dir):
        raise FileNotFoundError(f"training folder not found: {train_dir}")
    out = []
    if "train" in splits:
        out.append(("train", train_dir, os.path.join(output_root, "train", "roi")))
    val_dir = os.path.join(category_dir, "validation", mvtec.GOOD)
    if "validation" in splits:
        if os.path.isdir(val_dir):
            out.append(("validation", val_dir, os.path.join(output_root, "validation", "roi")))
        else:
            logging.info("no %s: no validation ROIs", val_dir)
    if "test" in splits:
        test_dir = os.path.join(category_dir, "test")
        if not os.path.isdir(test_dir):
            raise FileNotFoundError(f"test folder not found: {test_dir} (drop test from "
                                    f"--splits)")
        for folder in sorted(os.listdir(test_dir)):
            if os.path.isdir(os.path.join(test_dir, folder)) and not folder.startswith("."):
                out.append((f"test/{folder}", os.path.join(test_dir, folder),
                            os.path.join(output_root, "test_roi", folder)))
    return out


def _existing_masks(roi_folder):
    found = collections.defaultdict(list)
    if os.path.isdir(roi_folder):
        for path in mvtec.list_images(roi_folder):
            found[os.path.splitext(os.path.basename(path))[0]].append(path)
    return found


def plan(category_dir, output_root, splits, overwrite=False) -> list[Job]:
    """The image/mask pairs of ``splits`` (a subset of choices.ROI_SPLITS).

    An existing mask of the same stem (any image extension) is kept (``existing=True``)
    unless ``overwrite``; replacing one that is not ``<stem>.png`` is refused, since two
    masks of one stem would break the indexing.

    Raises:
      FileNotFoundError: missing category, train/good or (with "test") test folder.
      ValueError: unknown split; two images of one stem in a folder; a mask that
        ``overwrite`` cannot replace.
    """
    for split in splits:
        choices.check("splits", split, choices.ROI_SPLITS)
    if not os.path.isdir(category_dir):
        raise FileNotFoundError(f"category folder not found: {category_dir}")
    jobs = []
    for group, image_dir, roi_dir in _sources(category_dir, output_root, splits):
        existing, seen = _existing_masks(roi_dir), {}
        for path in mvtec.list_images(image_dir):
            stem = os.path.splitext(os.path.basename(path))[0]
            if stem in seen:
                raise ValueError(f"two images with the stem {stem!r}: {seen[stem]} and "
                                 f"{path}; their ROI files would collide")
            seen[stem] = path
            target = os.path.join(roi_dir, stem + ".png")
            old = existing.get(stem, [])
            if old and not overwrite:
                jobs.append(Job(path, old[0], group, existing=True))
                continue
            foreign = [p for p in old if p != target]
            if foreign:
                raise ValueError(f"cannot replace the ROI file {foreign[0]} by {target}: "
                                 f"delete it first (two ROI files of one stem)")
            jobs.append(Job(path, target, group))
    return jobs


def _check_writable(paths):
    for folder in sorted({os.path.dirname(p) for p in paths}):
        probe = folder
        while not os.path.isdir(probe):
            probe = os.path.dirname(probe)
        # The mode bits too: root may write anywhere, but a folder marked read-only is data.
        if not (os.access(probe, os.W_OK | os.X_OK) and os.stat(probe).st_mode & 0o222):
            raise ValueError(f"cannot write into {folder} ({probe} is not "
                             f"writable): pass --output_dir")


def _encode_png(mask01, what):
    ok, buf = cv2.imencode(".png", mask01 * np.uint8(255))
    if not ok:
        raise ValueError(f"PNG encoding failed for {what}")
    return buf.tobytes()


def compute_masks(jobs, rule=None, template=None) -> dict:
    """{mask_path: PNG bytes} of the jobs that are not ``existing``, by ``rule`` or
    ``template`` (uint8 {0, 1} [H, W]; exactly one of the two).

    Raises:
      ValueError: an unreadable image (io.ImageReadError); images whose ROI is empty (all
        named in the message, up to 5).
    """
    if (rule is None) == (template is None):
        raise ValueError("give exactly one of a foreground rule and a template mask")
    encoded, empty = {}, []
    for job in jobs:
        if job.existing:
            continue
        image = io.read_image(job.image_path)
        mask = (foreground_roi(image, rule) if rule is not None
                else template_roi(template, image.shape[:2]))
        if not mask.any():
            empty.append(job.image_path)
            continue
        encoded[job.mask_path] = _encode_png(mask, job.mask_path)
    if empty:
        raise ValueError(f"the ROI is empty for {len(empty)} image(s), e.g. "
                         f"{', '.join(empty[:5])}: change the rule flags, or paint their "
                         f"masks (an existing mask is kept)")
    return encoded


def _display(image):
    """uint8 RGB with a 1st-99th percentile contrast stretch (dark parts become visible)."""
    image = io.read_image(image) if isinstance(image, str) else image
    low, high = np.percentile(image, (1, 99))
    if high <= low:
        return image
    scaled = (image.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def preview_tile(image, mask, caption, tile=TILE):
    """uint8 [tile + 16, tile, 3]: the contrast-stretched image fitted into a tile (aspect
    kept), the outside of the ROI tinted red, the ROI outlined in green, a caption below."""
    height, width = image.shape[:2]
    scale = min(tile / height, tile / width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(_display(image), size, interpolation=cv2.INTER_AREA)
    small_mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST_EXACT)
    outside = small_mask == 0
    small[outside] = (0.5 * small[outside] + 0.5 * np.array(OUTSIDE_RGB)).astype(np.uint8)
    plots.draw_outline(small, small_mask, OUTLINE_RGB, "ROI")
    out = np.full((tile + 16, tile, 3), 48, np.uint8)
    top, left = (tile - size[1]) // 2, (tile - size[0]) // 2
    out[top:top + size[1], left:left + size[0]] = small
    cv2.putText(out, caption[:30], (3, tile + 12), cv2.FONT_HERSHEY_PLAIN, 0.85,
                (255, 255, 255), 1, cv2.LINE_AA)
    return out


def preview_sheet(tiles, columns=PREVIEW_COLUMNS):
    """Tiles of equal shape in rows of ``columns`` (the last row padded dark)."""
    rows = []
    for start in range(0, len(tiles), columns):
        row = list(tiles[start:start + columns])
        row += [np.full_like(tiles[0], 24)] * (columns - len(row))
        rows.append(np.concatenate(row, axis=1))
    return np.concatenate(rows, axis=0)


def _spread(items, count):
    """Up to ``count`` items evenly spaced over ``items`` (first and last included)."""
    if len(items) <= count:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


def _split_of(group):
    return group.split("/")[0]


def write_previews(jobs, preview_dir, count) -> dict:
    """One sheet ``<preview_dir>/<split>.png`` per split with up to ``count`` images evenly
    spread over it (test: over all its folders) and their ROI files; {split: path}."""
    by_split = collections.defaultdict(list)
    for job in jobs:
        by_split[_split_of(job.group)].append(job)
    paths = {}
    for split, split_jobs in by_split.items():
        tiles = []
        for job in _spread(split_jobs, count):
            image = io.read_image(job.image_path)
            mask = io.read_mask(job.mask_path, image.shape[:2])
            stem = os.path.splitext(os.path.basename(job.image_path))[0]
            name = stem if split == job.group else f"{job.group.split('/', 1)[1]}/{stem}"
            tiles.append(preview_tile(image, mask, f"{name} {100 * mask.mean():.0f}%"))
        paths[split] = os.path.join(preview_dir, f"{split}.png")
        plots.save_png(paths[split], preview_sheet(tiles))
    return paths


def roi_fractions(jobs) -> dict:
    """{group: [mean, min, max] of the ROI's share of the image} over the jobs' ROI files."""
    shares = collections.defaultdict(list)
    for job in jobs:
        shares[job.group].append(float(io.read_mask(job.mask_path).mean()))
    return {g: [float(np.mean(v)), float(np.min(v)), float(np.max(v))]
            for g, v in shares.items()}


def gt_coverage(category_dir, jobs) -> dict:
    """Share of ground-truth defect pixels inside the test ROIs, from the ``test/...`` jobs.

    Returns:
      {folder: {"inside": pixels, "total": pixels, "fraction": inside / total, "images":
      count, "worst": lowest per-image fraction}} for every defect folder with non-empty
      ground truth, plus "all" over every folder; {} without test jobs.
    """
    rois = {job.image_path: job.mask_path for job in jobs if _split_of(job.group) == "test"}
    if not rois:
        return {}
    per = collections.defaultdict(lambda: {"inside": 0, "total": 0, "images": 0,
                                           "worst": 1.0})
    for sample in mvtec.index_test(category_dir):
        if sample.mask_path is None or sample.path not in rois:
            continue
        roi = io.read_mask(rois[sample.path])
        gt = io.read_mask(sample.mask_path, roi.shape)
        total = int(gt.sum())
        if not total:
            continue
        inside = int((gt & roi).sum())
        for key in (sample.defect, "all"):
            entry = per[key]
            entry["inside"] += inside
            entry["total"] += total
            entry["images"] += 1
            entry["worst"] = min(entry["worst"], inside / total)
    for entry in per.values():
        entry["fraction"] = entry["inside"] / entry["total"]
    return dict(sorted(per.items()))


def write_rois(category_dir, output_dir="", splits=("train", "validation"), rule=None,
               template_path=None, overwrite=False, preview_dir="", preview_count=24):
    """Writes the ROI masks of a category, previews and a summary; see the module docstring.

    Args:
      category_dir: MVTec-style category folder (read only).
      output_dir: root of the written tree; "" is ``category_dir``.
      splits: subset of choices.ROI_SPLITS; a missing validation folder is skipped.
      rule: a :class:`ForegroundRule`; None with ``template_path``.
      template_path: one mask file used for every image (resized, nearest), or None.
      overwrite: replace existing ``<stem>.png`` masks (otherwise they are kept).
      preview_dir: folder of the preview sheets and ``roi.json``; "" is
        ``<output root>/roi_preview``.
      preview_count: images per preview sheet, >= 1.
    Returns:
      The summary written to ``<preview_dir>/roi.json``: counts per group, ROI shares,
      ground-truth coverage of the test ROIs, preview paths, the rule or template.
    Raises:
      FileNotFoundError, ValueError: bad arguments or inputs, named; nothing is written.
    """
    if (rule is None) == (template_path is None):
        raise ValueError("give either a foreground rule or a template mask, not both")
    choices.check_positive_int("preview_count", preview_count)
    template = None
    if rule is not None:
        rule.validate()
    else:
        template = io.read_mask(template_path)
        if not template.any():
            raise ValueError(f"template mask {template_path} is empty (all zero)")
    output_root = output_dir or category_dir
    preview_dir = preview_dir or os.path.join(output_root, "roi_preview")
    jobs = plan(category_dir, output_root, splits, overwrite)
    if not jobs:
        raise ValueError(f"no images to write ROIs for in {category_dir} (splits "
                         f"{', '.join(splits)})")
    _check_writable([job.mask_path for job in jobs if not job.existing]
                    + [os.path.join(preview_dir, SUMMARY)])
    encoded = compute_masks(jobs, rule, template)
    for path, data in encoded.items():
        file_modes.atomic_write(path, data)
    counts = collections.Counter((job.group, job.existing) for job in jobs)
    groups = sorted({job.group for job in jobs})
    summary = {
        "data_dir": category_dir, "output_root": output_root,
        "rule": dataclasses.asdict(rule) if rule is not None else None,
        "template": template_path,
        "written": {g: counts[(g, False)] for g in groups},
        "kept": {g: counts[(g, True)] for g in groups},
        "roi_share_mean_min_max": roi_fractions(jobs),
        "gt_coverage": gt_coverage(category_dir, jobs),
        "previews": write_previews(jobs, preview_dir, preview_count),
    }
    file_modes.atomic_write(os.path.join(preview_dir, SUMMARY),
                       (json.dumps(summary, indent=2) + "\n").encode("utf-8"))
    return summary
