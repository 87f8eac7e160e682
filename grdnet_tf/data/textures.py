"""The built-in real texture source: crops of photographs that ship with a dependency.

DRAEM draws its anomaly textures from DTD, a download. So that the default synthesis has a
real (photographic, not procedural) texture source without one, the "builtin" source
crops the two sample photographs scikit-learn ships inside its wheel
(``sklearn/datasets/images/{china,flower}.jpg``, CC BY 2.0 per that folder's README.txt:
a temple with roof tiles, foliage and sky, and a flower): square-ish windows of random size
and position, resized to ``data.image_size``. Together with the photometric texture
operations (grdnet_tf.data.texture_ops) they give varied natural textures. A user with DTD
points ``synthesis.texture_dir`` at it instead (the "external" source).
"""
import functools
import os

import numpy as np
import sklearn.datasets

from grdnet_tf.data import io, preprocess

PHOTOS = ("china.jpg", "flower.jpg")
BANK_SIZE = 64  # crops in the bank the pipeline builds


def photo_paths():
    folder = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images")
    paths = [os.path.join(folder, name) for name in PHOTOS]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"built-in texture photographs not found: {missing} (they ship "
                                "with scikit-learn; set synthesis.texture_builtin_weight=0 to "
                                "train without them)")
    return paths


@functools.lru_cache(maxsize=4)
def builtin_textures(image_size, channels, count, seed=0, min_fraction=0.15):
    """``count`` crops as uint8 ``[count, H, W, channels]``.

    Each crop has the aspect ratio of ``image_size`` and a height that is a uniform
    fraction in [min_fraction, 1] of the largest such window of its photograph, at a
    uniform position; the photograph of each crop alternates. Deterministic in ``seed``.
    """
    height, width = int(image_size[0]), int(image_size[1])
    rng = np.random.default_rng(seed)
    photos = [io.read_image(p, None, channels) for p in photo_paths()]
    crops = []
    for i in range(count):
        photo = photos[i % len(photos)]
        ph, pw = photo.shape[:2]
        full_h = min(ph, int(pw * height / width))
        crop_h = max(1, int(round(full_h * rng.uniform(min_fraction, 1.0))))
        crop_w = max(1, min(pw, int(round(crop_h * width / height))))
        top = int(rng.integers(0, ph - crop_h + 1))
        left = int(rng.integers(0, pw - crop_w + 1))
        crops.append(photo[top:top + crop_h, left:left + crop_w])
    bank = np.stack([preprocess.model_input_uint8(c[None], (height, width), channels)[0].numpy()
                     for c in crops])
    bank.flags.writeable = False  # shared by every caller (cached)
    return bank
