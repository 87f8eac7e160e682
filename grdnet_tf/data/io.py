"""Reading images and masks from disk with OpenCV (PNG, JPEG, BMP, TIFF).

Images come back as ``uint8 [H, W, C]`` RGB (C = 3) or grayscale (C = 1), whatever the file
holds: alpha is dropped, BGR becomes RGB, grayscale and colour are converted to the requested
channel count, 16-bit files are scaled to 8 bits. Resizing to ``image_size = (height, width)``
uses ``cv2.INTER_AREA`` when shrinking and ``cv2.INTER_LINEAR`` when enlarging (the aspect
ratio is not kept: the networks see exactly ``image_size``).

Masks (ROIs, ground truth) are binarised by one rule (:func:`binarize_mask`): a mask with
at most two values (0 and one other: 0/1, 0/255, 0/65535) has that value inside; any other
mask (JPEG artefacts, antialiased or soft edges) counts a pixel inside at half the full
scale or more (>= 128 of 255, >= 32768 of 65535). They are resized with exact nearest
neighbour, so they stay in {0, 1}. :class:`MaskNotes` checks a mask against its image: a
size with another aspect ratio is an error (the mask belongs to another image or crop);
a resized or non-binary mask is counted and reported in one warning.

Every failure (missing, empty, corrupt or undecodable file) raises :class:`ImageReadError`
naming the file.
"""
import os
import threading

import cv2
import numpy as np
from absl import logging

from grdnet_tf import choices

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
# Largest relative difference of aspect ratio between a mask and its image (resized to it);
# more means the mask belongs to another image or crop.
ASPECT_TOLERANCE = 0.01


def aspect_ratios_differ(shape, other) -> bool:
    """True when (height, width) `shape` and `other` differ in aspect ratio by more than
    ASPECT_TOLERANCE (relative)."""
    (h, w), (oh, ow) = shape[:2], other[:2]
    return abs((h / w) / (oh / ow) - 1.0) > ASPECT_TOLERANCE


class ImageReadError(ValueError):
    """An image or mask file that cannot be read; the message names the file."""

    def __init__(self, path, reason):
        self.path = str(path)
        super().__init__(f"cannot read image file {self.path}: {reason}")


def is_image_file(name) -> bool:
    """True for a non-hidden file name with one of :data:`IMAGE_EXTENSIONS` (any case)."""
    base = os.path.basename(name)
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in IMAGE_EXTENSIONS


def jpeg_components(data):
    """Colour components of a JPEG (1 gray, 3 YCbCr/RGB, 4 CMYK/YCCK) from its frame
    header, or None when `data` (bytes or uint8 array) is not a JPEG or has none."""
    data = bytes(data[:2 ** 20])  # the frame header precedes the image data
    if data[:3] != b"\xff\xd8\xff":
        return None
    pos = 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker, length = data[pos + 1], int.from_bytes(data[pos + 2:pos + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn
            return data[pos + 9] if pos + 9 < len(data) else None
        if marker == 0xFF:
            pos += 1
            continue
        pos += 2 + length
    return None


def _decode(path, flags):
    try:
        data = np.fromfile(path, dtype=np.uint8)  # also handles non-ASCII paths
    except OSError as e:
        raise ImageReadError(path, e.strerror or str(e)) from e
    if data.size == 0:
        raise ImageReadError(path, "the file is empty")
    if jpeg_components(data) == 4:
        # OpenCV and TensorFlow (the SavedModel) convert CMYK differently (up to 67 levels).
        raise ImageReadError(path, "it is a CMYK JPEG; convert it to RGB first (the "
                                   "exported SavedModel rejects CMYK too)")
    try:
        image = cv2.imdecode(data, flags)
    except cv2.error as e:
        raise ImageReadError(path, f"OpenCV failed to decode it ({e})") from e
    if image is None or image.size == 0:
        raise ImageReadError(path, "OpenCV cannot decode it (corrupt or not an image)")
    return image


def _to_uint8(image, path):
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image.astype(np.uint32) // 257).astype(np.uint8)
    if image.dtype == np.bool_:
        return image.astype(np.uint8) * 255
    raise ImageReadError(path, f"unsupported pixel type {image.dtype} (expected 8 or 16 bit)")


def _resize(image, image_size, interpolation=None):
    height, width = int(image_size[0]), int(image_size[1])
    if image.shape[:2] == (height, width):
        return image
    if interpolation is None:
        shrinking = height <= image.shape[0] and width <= image.shape[1]
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def read_image(path, image_size=None, channels=3) -> np.ndarray:
    """Reads one image as ``uint8 [H, W, channels]``.

    Args:
      path: file path (PNG, JPEG, BMP or TIFF; 8-bit or 16-bit, gray, RGB or RGBA).
      image_size: ``(height, width)`` to resize to, or None to keep the native size.
      channels: 3 for RGB (gray is replicated), 1 for grayscale (RGB is converted).
    Raises:
      ImageReadError: the file is missing, empty, corrupt or has an unsupported format.
    """
    choices.check("channels", channels, choices.CHANNELS)
    image = _to_uint8(_decode(path, cv2.IMREAD_UNCHANGED), path)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        image = image[:, :, None] if channels == 1 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif image.ndim == 3 and image.shape[2] in (3, 4):
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if image.shape[2] == 4
                             else cv2.COLOR_BGR2RGB)
        if channels == 1:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[:, :, None]
    else:
        raise ImageReadError(path, f"unsupported image shape {image.shape}")
    if image_size is not None:
        image = _resize(image, image_size)
        if image.ndim == 2:  # cv2.resize drops a trailing channel of 1
            image = image[:, :, None]
    return np.ascontiguousarray(image, dtype=np.uint8)


def binarize_mask(levels) -> tuple[np.ndarray, bool]:
    """(uint8 {0, 1} mask, binary) of a 2-D mask of grey levels (see the module rule)."""
    nonzero = levels[levels > 0]
    binary = nonzero.size == 0 or nonzero.min() == nonzero.max()
    if binary:
        return (levels > 0).astype(np.uint8), True
    half = (np.iinfo(levels.dtype).max + 1) // 2 if levels.dtype.kind in "ui" else 0.5
    return (levels >= half).astype(np.uint8), False


def _mask_levels(path):
    mask = _decode(path, cv2.IMREAD_UNCHANGED)
    if mask.ndim == 3:
        mask = mask[:, :, :3].max(axis=2) if mask.shape[2] >= 3 else mask.max(axis=2)
    if mask.ndim != 2:
        raise ImageReadError(path, f"unsupported mask shape {mask.shape}")
    return mask


def read_mask(path, image_size=None, notes=None, image_shape=None) -> np.ndarray:
    """Reads a mask as ``uint8 [H, W]`` in {0, 1} (:func:`binarize_mask`).

    Args:
      path: mask file; an alpha channel is ignored, colour channels are combined (max).
      image_size: ``(height, width)`` to resize to (nearest neighbour), or None.
      notes: a :class:`MaskNotes` that counts non-binary and resized masks, with
        image_shape: ``(height, width)`` of the mask's image (checked by ``notes``).
    Raises:
      ImageReadError: the file is missing, empty, corrupt or has an unsupported format.
      ValueError: (with ``notes``) the mask's aspect ratio is not its image's.
    """
    mask, binary = binarize_mask(_mask_levels(path))
    if notes is not None:
        notes.check(path, mask.shape, binary, image_shape)
    if image_size is not None:
        mask = resize_mask(mask, image_size)
    return np.ascontiguousarray(mask)


def resize_mask(mask, image_size) -> np.ndarray:
    """A mask ``[h, w]`` at ``(height, width)`` by nearest neighbour (as :func:`read_mask`
    resizes); the same array when it already has that size."""
    return _resize(mask, image_size, cv2.INTER_NEAREST_EXACT)


class MaskNotes:
    """Checks masks against their images while a split is read, and reports once.

    ``check`` raises ValueError for a mask whose aspect ratio differs from its image's by
    more than 1 % (a mask of another image or crop: stretching it would misplace it); masks
    of another size (same aspect ratio, resized with nearest neighbour) and non-binary
    masks (thresholded at half scale) are counted, and ``warn`` logs one line per kind with
    the count and an example. Thread-safe (the training cache reads with threads).

    Args:
      what: the kind of mask in the messages, e.g. "ROI" or "ground-truth".
    """

    def __init__(self, what):
        self.what = what
        self.resized, self.non_binary = [], []
        self._lock = threading.Lock()

    def check(self, path, mask_shape, binary, image_shape):
        if image_shape is not None and tuple(mask_shape) != tuple(image_shape[:2]):
            (mh, mw), (h, w) = mask_shape, image_shape[:2]
            if aspect_ratios_differ(mask_shape, image_shape):
                raise ValueError(f"{self.what} mask {path} is {mw}x{mh} (width x height), its "
                                 f"image is {w}x{h}: another aspect ratio, so the mask does "
                                 f"not belong to this image; fix or remove it")
            with self._lock:
                self.resized.append(f"{path} ({mw}x{mh}, image {w}x{h})")
        if not binary:
            with self._lock:
                self.non_binary.append(str(path))

    def warn(self):
        """Logs the counts (nothing when every mask was binary and of its image's size)."""
        if self.resized:
            logging.warning("%d %s mask(s) differ in size from their image and were resized "
                            "to it (nearest neighbour), e.g. %s", len(self.resized),
                            self.what, self.resized[0])
        if self.non_binary:
            logging.warning("%d %s mask(s) are not binary (more than two grey levels, e.g. "
                            "JPEG or soft edges): pixels >= half scale (128 of 255) count as "
                            "inside, e.g. %s", len(self.non_binary), self.what,
                            self.non_binary[0])
