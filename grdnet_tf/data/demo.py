"""The embedded demo dataset: a small synthetic inspection task in the MVTec AD layout.

A textured disk ("widget": fine oriented stripes, grain noise, a dark rim and a hub; its
position, size and stripe angle vary slightly) lies on a cluttered background of random
shapes and lines that changes from image to image. The ROI is the disk. Defects are dark or
bright blotchy spots and bright grainy scratches. Layout of ``<output_dir>/<category>``::

    train/good/NNN.png            normal images           train/roi/NNN.png   disk masks
    validation/good/NNN.png       normal images held out for the checkpoint choice and the
                                  threshold              validation/roi/NNN.png
    test/good/NNN.png             normal images
    test/spot/NNN.png, test/scratch/NNN.png   one defect inside the ROI
    ground_truth/<defect>/NNN_mask.png        its pixels (0/255)
    test/good_outside_roi/NNN.png the same kinds of defects, only on the background: label 0
    test_roi/<folder>/NNN.png     disk masks of every test image
    DEMO_DATASET.txt              marker: the arguments, then every file written

Running it again with the same arguments reuses the files; with others it deletes the files
the marker lists and writes the new ones. Files the marker does not list (a user's) are
never deleted: their presence stops it with an error naming them.

numpy + OpenCV only; one random generator per image seeded by (seed, split, index), so the
same arguments give byte-identical files.
"""
import os
import re

import cv2
import numpy as np

MARKER = "DEMO_DATASET.txt"
DEFECTS = ("spot", "scratch")
_SPLITS = {"train": 0, "test_good": 1, "spot": 2, "scratch": 3, "good_outside_roi": 4,
           "validation": 5}


def _background(rng, height, width, scale):
    """Smooth two-colour gradient plus 8-16 random shapes and lines of random colours."""
    top, bottom = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
    t = np.linspace(0.0, 1.0, height)[:, None, None]
    image = (1 - t) * top + t * bottom + rng.normal(0, 4, (height, width, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(8, 17)):
        colour = tuple(int(c) for c in rng.uniform(0, 255, 3))
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
        size = int(rng.integers(4, 22) * scale)
        kind = rng.integers(0, 4)
        if kind == 0:
            cv2.rectangle(image, (x - size, y - size // 2), (x + size, y + size // 2),
                          colour, -1)
        elif kind == 1:
            cv2.circle(image, (x, y), max(2, size // 2), colour, -1, cv2.LINE_AA)
        elif kind == 2:
            end = (x + int(rng.integers(-40, 41) * scale), y + int(rng.integers(-40, 41) * scale))
            cv2.line(image, (x, y), end, colour, int(rng.integers(1, 4)), cv2.LINE_AA)
        else:
            points = np.array([(x, y)] + [(x + int(rng.integers(-size, size + 1)),
                                           y + int(rng.integers(-size, size + 1)))
                                          for _ in range(2)], np.int32)
            cv2.fillPoly(image, [points], colour, cv2.LINE_AA)
    return image


def _product(rng, image, scale):
    """Paints the widget in place and returns its ROI (uint8 {0, 1})."""
    height, width = image.shape[:2]
    cx = width / 2 + rng.uniform(-6, 6) * scale
    cy = height / 2 + rng.uniform(-6, 6) * scale
    radius = rng.uniform(34, 40) * scale
    angle = rng.uniform(0, np.pi)
    period = 8.0 * scale
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    dist = np.hypot(xx - cx, yy - cy)
    stripes = np.sin(2 * np.pi * ((xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle))
                     / period)
    grain = rng.normal(0, 1, (height, width))
    shade = 1.0 - 0.25 * (dist / radius) ** 2
    base = np.array([150.0, 165.0, 185.0]) + rng.uniform(-10, 10, 3)
    value = base[None, None, :] * shade[:, :, None] + (22 * stripes + 8 * grain)[:, :, None]
    hub = dist < 0.25 * radius
    value[hub] = 0.6 * value[hub]
    rim = (dist >= radius - 2.5 * scale) & (dist < radius)
    value[rim] = 0.45 * value[rim]
    roi = dist < radius
    image[roi] = np.clip(value[roi], 0, 255).astype(np.uint8)
    return roi.astype(np.uint8)


def _defect_shape(rng, kind, centre, height, width, scale):
    """Binary mask of one spot (ellipse) or scratch (curved polyline)."""
    mask = np.zeros((height, width), np.uint8)
    cx, cy = centre
    if kind == "spot":
        axes = (int(rng.uniform(6, 11) * scale), int(rng.uniform(6, 11) * scale))
        cv2.ellipse(mask, (int(cx), int(cy)), axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    else:
        length = rng.uniform(25, 45) * scale
        direction = rng.uniform(0, np.pi)
        bend = rng.uniform(-0.4, 0.4)
        s = np.linspace(-0.5, 0.5, 12)
        angle = direction + bend * s * 2
        xs = cx + np.cumsum(np.cos(angle)) * length / 12 - np.cos(direction) * length / 2
        ys = cy + np.cumsum(np.sin(angle)) * length / 12 - np.sin(direction) * length / 2
        points = np.stack([xs, ys], 1).round().astype(np.int32)
        # At least ~2 pixels wide once the demo config resizes 128 -> 64.
        cv2.polylines(mask, [points], False, 1, max(2, int(round(4.5 * scale))))
    return mask


def _paint_defect(rng, image, kind, region):
    """Paints a defect texture on the pixels of ``region`` (bool [H, W])."""
    height, width = image.shape[:2]
    noise = rng.normal(0, 1, (height, width, 1))
    if kind == "spot":
        if rng.uniform() < 0.5:  # dark blotch
            value = 0.3 * image.astype(np.float64) + 25 + 18 * noise
        else:  # bright blotch
            value = 0.4 * image.astype(np.float64) + 150 + 20 * noise
    else:  # bright, grainy, no stripes
        value = np.full((height, width, 3), 215.0) + 30 * noise
    image[region] = np.clip(value[region], 0, 255).astype(np.uint8)


def _add_defect(rng, image, roi, kind, inside, scale, min_pixels):
    """Adds one defect inside (or entirely outside) the ROI; returns its mask (bool)."""
    height, width = image.shape[:2]
    grown = cv2.dilate(roi, np.ones((5, 5), np.uint8), iterations=max(1, int(2 * scale)))
    allowed = roi.astype(bool) if inside else ~grown.astype(bool)
    ys, xs = np.nonzero(cv2.erode(roi, np.ones((3, 3), np.uint8), iterations=int(8 * scale))
                        if inside else allowed)
    for _ in range(100):
        k = rng.integers(0, len(xs))
        region = _defect_shape(rng, kind, (xs[k], ys[k]), height, width, scale).astype(bool)
        region &= allowed
        if region.sum() >= min_pixels:
            _paint_defect(rng, image, kind, region)
            return region
    raise RuntimeError("demo generator: no room for a defect (image too small?)")


def _write_png(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, data = cv2.imencode(".png", array)
    if not ok:
        raise OSError(f"cannot encode {path}")
    data.tofile(path)


def _image(seed, split, index, image_size, defect=None, outside=False):
    """(image RGB uint8, roi {0,1}, defect mask bool or None) of one generated sample."""
    rng = np.random.default_rng([seed, _SPLITS[split], index])
    height, width = int(image_size[0]), int(image_size[1])
    scale = min(height, width) / 128.0
    image = _background(rng, height, width, scale)
    roi = _product(rng, image, scale)
    min_pixels = int(12 * scale * scale)
    if defect is not None:
        mask = _add_defect(rng, image, roi, defect, True, scale, min_pixels)
        return image, roi, mask
    if outside:
        for n in range(rng.integers(1, 3)):
            kind = DEFECTS[int(rng.integers(0, len(DEFECTS)))] if n else DEFECTS[index % 2]
            _add_defect(rng, image, roi, kind, False, scale, min_pixels)
    return image, roi, None


def make_demo_dataset(output_dir, seed=0, image_size=(128, 128), n_train=120, n_test_good=20,
                      n_test_defect=30, n_test_outside=20, n_validation=100,
                      category="widget") -> str:
    """Writes the demo category and returns its folder ``<output_dir>/<category>``.

    Args:
      output_dir: parent folder (created).
      seed: generator seed; the same arguments give byte-identical files.
      image_size: (height, width) of the PNG files (128x128 by default; >= 64 each).
      n_train, n_test_good, n_test_defect, n_test_outside: image counts; the defective
        images are split between ``spot`` and ``scratch``.
      n_validation: normal images in ``validation/good`` (with ROIs). With them the
        training uses every ``train/good`` image and the threshold is a quantile of 100
        normals rather than of a 10 % split (12 images: nearly their maximum). 0 writes no
        validation folder (training then splits data.val_fraction off ``train/good``).
      category: folder name.
    Raises:
      FileExistsError: the category folder holds files that are not part of a demo
        dataset written here (no marker file, or files the marker does not list).
    """
    if min(image_size) < 64:
        raise ValueError(f"image_size={image_size} must be at least 64x64")
    counts = dict(n_train=n_train, n_test_good=n_test_good, n_test_defect=n_test_defect,
                  n_test_outside=n_test_outside, n_validation=n_validation)
    negative = [f"{name}={value}" for name, value in counts.items() if value < 0]
    if negative:
        raise ValueError(f"image counts must be >= 0: {', '.join(negative)}")
    category_dir = os.path.join(output_dir, category)
    header = (f"grdnet_tf demo dataset: seed={seed} image_size={tuple(image_size)} "
              f"train={n_train} test_good={n_test_good} test_defect={n_test_defect} "
              f"test_outside={n_test_outside} validation={n_validation}")
    if _previous_dataset(category_dir, header):
        return category_dir
    os.makedirs(category_dir, exist_ok=True)
    written = []

    def write(folder, index, image, roi, roi_folder, mask=None, defect=None):
        stem = f"{index:03d}"
        files = [(os.path.join(folder, stem + ".png"), image),
                 (os.path.join(roi_folder, stem + ".png"), roi * 255)]
        if mask is not None:
            files.append((os.path.join("ground_truth", defect, stem + "_mask.png"),
                          mask.astype(np.uint8) * 255))
        for relative, pixels in files:
            _write_png(os.path.join(category_dir, relative), pixels)
            written.append(relative)

    for i in range(n_train):
        image, roi, _ = _image(seed, "train", i, image_size)
        write("train/good", i, image, roi, "train/roi")
    for i in range(n_validation):
        image, roi, _ = _image(seed, "validation", i, image_size)
        write("validation/good", i, image, roi, "validation/roi")
    for i in range(n_test_good):
        image, roi, _ = _image(seed, "test_good", i, image_size)
        write("test/good", i, image, roi, "test_roi/good")
    n_spot = (n_test_defect + 1) // 2
    for defect, count in (("spot", n_spot), ("scratch", n_test_defect - n_spot)):
        for i in range(count):
            image, roi, mask = _image(seed, defect, i, image_size, defect=defect)
            write(f"test/{defect}", i, image, roi, f"test_roi/{defect}", mask, defect)
    for i in range(n_test_outside):
        image, roi, _ = _image(seed, "good_outside_roi", i, image_size, outside=True)
        write("test/good_outside_roi", i, image, roi, "test_roi/good_outside_roi")
    with open(os.path.join(category_dir, MARKER), "w", encoding="utf-8") as f:
        f.write(header + "\n" + MARKER_NOTE + "".join(f"{p}\n" for p in written))
    return category_dir


MARKER_NOTE = ("# Written by grdnet-demo-data. Running it again with other arguments deletes "
               "the files listed below\n# (and only those); other files in this folder stop "
               "it with an error.\n")


def _listed_files(category_dir):
    """(header, files listed) of the marker; ("", None) without a marker."""
    path = os.path.join(category_dir, MARKER)
    if not os.path.isfile(path):
        return "", None
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    header = lines[0] if lines else ""
    listed = {line for line in lines[1:] if line and not line.startswith("#")}
    counts = re.search(r"train=(\d+) test_good=(\d+) test_defect=(\d+) test_outside=(\d+)",
                       header)  # older markers, which wrote no validation folder
    if not listed and counts:  # a marker of an older version: only the arguments
        listed = _planned_files(*(int(c) for c in counts.groups()))
    return header, listed


def _planned_files(n_train, n_test_good, n_test_defect, n_test_outside):
    """The relative paths make_demo_dataset writes for these counts (marker aside)."""
    n_spot = (n_test_defect + 1) // 2
    groups = [("train/good", "train/roi", None, n_train),
              ("test/good", "test_roi/good", None, n_test_good),
              ("test/spot", "test_roi/spot", "spot", n_spot),
              ("test/scratch", "test_roi/scratch", "scratch", n_test_defect - n_spot),
              ("test/good_outside_roi", "test_roi/good_outside_roi", None, n_test_outside)]
    files = set()
    for folder, roi_folder, defect, count in groups:
        for i in range(count):
            files |= {f"{folder}/{i:03d}.png", f"{roi_folder}/{i:03d}.png"}
            if defect:
                files.add(f"ground_truth/{defect}/{i:03d}_mask.png")
    return files


def _previous_dataset(category_dir, header):
    """Deals with what `category_dir` already holds: True when it is the same demo dataset
    complete (nothing to write); deletes an older demo dataset's files (False); raises
    FileExistsError naming files that no demo dataset wrote."""
    if not os.path.isdir(category_dir):
        return False
    present = {os.path.relpath(os.path.join(root, name), category_dir)
               for root, _, names in os.walk(category_dir) for name in names}
    if not present:
        return False
    old_header, listed = _listed_files(category_dir)
    if listed is None:
        raise FileExistsError(f"{category_dir} exists and is not a demo dataset (no {MARKER}); "
                              f"choose another --output_dir or --category")
    foreign = sorted(present - listed - {MARKER})
    if foreign:
        raise FileExistsError(
            f"{category_dir} is a demo dataset but holds {len(foreign)} file(s) it did not "
            f"write ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); "
            f"move them out (the demo data is regenerated only where {MARKER} lists every "
            f"file) or choose another --output_dir")
    if old_header == header and listed <= present:
        return True
    for relative in sorted(listed & present) + [MARKER]:
        os.remove(os.path.join(category_dir, relative))
    for root, dirs, names in os.walk(category_dir, topdown=False):
        if root != category_dir and not os.listdir(root):
            os.rmdir(root)
    return False
