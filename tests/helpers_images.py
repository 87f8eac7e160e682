"""Test images: seeded random arrays and image files written with OpenCV (no TensorFlow)."""
import os

import cv2
import numpy as np


def random_images(shape, seed=0, dtype=np.float32):
    """Seeded random pixels of ``shape``: float in [0, 1) (``rng.random``) for a float
    ``dtype``, every value in [0, 255] for ``np.uint8``."""
    rng = np.random.default_rng(seed)
    if np.dtype(dtype) == np.uint8:
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.random(shape, dtype=dtype)


def write_image(path, array):
    """Writes ``array`` (uint8 or uint16 [H, W] gray, [H, W, 3] RGB or [H, W, 4] RGBA) to
    ``path``, creating its folder; the extension picks the format. Returns the path."""
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    elif array.ndim == 3 and array.shape[2] == 4:
        array = cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA)
    if not cv2.imwrite(path, array):
        raise OSError(f"cannot write {path}")
    return path
