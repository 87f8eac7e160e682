"""Defect-like synthetic anomalies for the calibration set (docs/method.md §5), not for
training.

The scoring choices (map sources, smoothing window, image baseline) are made on validation
normals against synthetic anomalies. When those anomalies are the training synthesis'
(Perlin blobs blended with textures), the segmentator has been trained on exactly that kind,
so validation favours it whatever it does on real defects. This family is one the networks
never see: shapes and appearances of common surface defects, drawn with TensorFlow ops and
stateless seeds like the training synthesis (`scoring.calibration_anomalies="defects"`).

Per draw, one of three kinds (equal odds):

* **spot** (hole, blowhole, stain, contamination): a rotated ellipse, aspect ratio
  log-uniform in [1, 3], made darker, X (1 - d), or brighter, X + d (1 - X);
* **scratch** (cut, crack): a thin parabolic arc, length U(5 %, 25 %) of the shorter image
  side, width U(0.6 %, 2 %) of it (at least about one pixel), bend up to 30 % of the length,
  darker or brighter as a spot;
* **patch** (a misplaced piece of surface, CutPaste-like): a rotated ellipse filled with the
  same image shifted by at least twice its longer semi-axis (circularly).

Spot and patch areas are log-uniform in [AREA_MIN, AREA_MAX] of the image (or the range
given: `scoring.calibration_mask_area_min / max` when set): the sizes of small real defects
(tire: a median 0.18 % of the image), not the training anomalies' 5 %.
The contrast d is U(CONTRAST_MIN, CONTRAST_MAX), dark or bright with probability 1/2. The
centre of every draw lies inside the ROI with probability IN_ROI_PROB (when the ROI is not
empty), else anywhere; a draw that misses the ROI is a calibration normal, as in the
training family. Every draw has an anomaly: the centre pixel is always in the mask.
"""
import math

import tensorflow as tf

from grdnet_tf.data import perlin

SPOT, SCRATCH, PATCH = 0, 1, 2
KIND_NAMES = ("spot", "scratch", "patch")

AREA_MIN, AREA_MAX = 0.0005, 0.01          # spot and patch area, fraction of the image
ASPECT_MAX = 3.0                           # ellipse axis ratio, log-uniform in [1, 3]
SCRATCH_LENGTH = (0.05, 0.25)              # fraction of the shorter side
SCRATCH_WIDTH = (0.006, 0.02)              # fraction of the shorter side
SCRATCH_BEND = 0.3                         # largest sagitta, fraction of the length
CONTRAST_MIN, CONTRAST_MAX = 0.3, 0.7      # d of the darker / brighter change
IN_ROI_PROB = 0.5
_ARC_POINTS = 128                          # samples along a scratch for its distance field
_MIN_HALF_WIDTH = 0.75                     # pixels: a 1-px scratch stays connected

(_KIND, _CENTRE, _IN_ROI, _SIZE, _ASPECT, _ANGLE, _LENGTH, _WIDTH, _BEND, _CONTRAST,
 _DARK, _SHIFT) = range(12)


def _u(seed, tag, low=0.0, high=1.0, shape=()):
    return perlin.uniform(shape, perlin.fold(seed, tag), low, high)


def _centre(height, width, seed, roi):
    """(y, x) pixel centre: inside the ROI with probability IN_ROI_PROB, else uniform."""
    anywhere = tf.minimum(tf.cast(_u(seed, _CENTRE, shape=[2]) * [height, width], tf.int32),
                          [height - 1, width - 1])
    if roi is None:
        return tf.cast(anywhere, tf.float32)
    inside = tf.reshape(roi[..., 0] > 0, [-1])
    logits = tf.where(inside, 0.0, -1e9)[None, :]
    flat = tf.random.stateless_categorical(logits, 1, perlin.fold(seed, _IN_ROI + 100),
                                           dtype=tf.int32)[0, 0]
    in_roi = tf.stack([flat // width, flat % width])
    use_roi = tf.logical_and(_u(seed, _IN_ROI) < IN_ROI_PROB, tf.reduce_any(inside))
    return tf.cast(tf.where(use_roi, in_roi, anywhere), tf.float32)


def _grid(height, width):
    yy, xx = tf.meshgrid(tf.range(height, dtype=tf.float32),
                         tf.range(width, dtype=tf.float32), indexing="ij")
    return yy, xx


def ellipse_mask(height, width, centre, area, aspect, angle):
    """Binary ``float32 [H, W, 1]``: the ellipse of ``area`` pixels (at least its centre
    pixel), axis ratio ``aspect``, rotated by ``angle`` (radians) about ``centre`` (y, x)."""
    yy, xx = _grid(height, width)
    major = tf.sqrt(area * aspect / math.pi)
    minor = major / aspect
    dy, dx = yy - centre[0], xx - centre[1]
    u = dx * tf.cos(angle) + dy * tf.sin(angle)
    v = -dx * tf.sin(angle) + dy * tf.cos(angle)
    inside = tf.square(u / tf.maximum(major, 0.5)) + tf.square(v / tf.maximum(minor, 0.5)) <= 1
    return tf.cast(inside, tf.float32)[..., None]


def scratch_mask(height, width, centre, length, half_width, bend, angle):
    """Binary ``float32 [H, W, 1]``: pixels within ``half_width`` of the parabolic arc
    through ``centre`` (y, x) with chord ``length`` along ``angle`` and sagitta ``bend``."""
    s = tf.linspace(-0.5, 0.5, _ARC_POINTS) * length
    offset = bend * (4.0 * tf.square(s / tf.maximum(length, 1e-6)) - 1.0)
    direction = tf.stack([tf.sin(angle), tf.cos(angle)])
    normal = tf.stack([tf.cos(angle), -tf.sin(angle)])
    # The arc passes through the centre at s = 0 (offset -bend there, so shift it back).
    points = (centre[None, :] + s[:, None] * direction[None, :]
              + (offset + bend)[:, None] * normal[None, :])
    yy, xx = _grid(height, width)
    pixels = tf.stack([tf.reshape(yy, [-1]), tf.reshape(xx, [-1])], axis=1)
    dist2 = tf.reduce_min(tf.reduce_sum(
        tf.square(pixels[:, None, :] - points[None, :, :]), axis=-1), axis=1)
    limit = tf.maximum(half_width, _MIN_HALF_WIDTH)
    return tf.cast(tf.reshape(dist2 <= limit * limit, [height, width, 1]), tf.float32)


def _shade(image, seed):
    """The image made darker, X (1 - d), or brighter, X + d (1 - X)."""
    d = _u(seed, _CONTRAST, CONTRAST_MIN, CONTRAST_MAX)
    dark = _u(seed, _DARK) < 0.5
    return tf.where(dark, image * (1.0 - d), image + d * (1.0 - image))


def synthesize(image, seed, roi=None, area_range=(AREA_MIN, AREA_MAX)):
    """One defect-like anomaly on ``image`` (float32 ``[H, W, C]`` in [0, 1]).

    Args:
      image: the clean image X.
      seed: stateless seed ``[2]``.
      roi: float32 ``[H, W, 1]`` ROI (where the centre may be drawn), or None.
      area_range: (min, max) spot and patch area, fractions of the image (log-uniform).
    Returns:
      (perturbed X_n, mask M, kind): float32 ``[H, W, C]`` in [0, 1], ``[H, W, 1]`` in
      {0, 1} with at least one pixel set, and the int32 kind (SPOT, SCRATCH, PATCH).
      Pixels outside M are X bit for bit.
    """
    height, width, _ = tuple(image.shape)
    side = float(min(height, width))
    kind = tf.minimum(tf.cast(_u(seed, _KIND) * len(KIND_NAMES), tf.int32),
                      len(KIND_NAMES) - 1)
    centre = _centre(height, width, seed, roi)
    angle = _u(seed, _ANGLE, 0.0, math.pi)
    low, high = (float(v) for v in area_range)
    if not 0 < low <= high <= 1:
        raise ValueError(f"area_range={area_range!r} must satisfy 0 < min <= max <= 1")
    area = tf.exp(_u(seed, _SIZE, math.log(low), math.log(high))) * height * width
    aspect = tf.exp(_u(seed, _ASPECT, 0.0, math.log(ASPECT_MAX)))

    def spot():
        return ellipse_mask(height, width, centre, area, aspect, angle), _shade(image, seed)

    def scratch():
        length = _u(seed, _LENGTH, *SCRATCH_LENGTH) * side
        half_width = 0.5 * _u(seed, _WIDTH, *SCRATCH_WIDTH) * side
        bend = _u(seed, _BEND, -SCRATCH_BEND, SCRATCH_BEND) * length
        mask = scratch_mask(height, width, centre, length, half_width, bend, angle)
        return mask, _shade(image, seed)

    def patch():
        mask = ellipse_mask(height, width, centre, area, aspect, angle)
        reach = 2.0 * tf.sqrt(area * aspect / math.pi) + 1.0
        # A shift of at least `reach` pixels along a random direction, at most half the image.
        direction = _u(seed, _SHIFT, 0.0, 2.0 * math.pi)
        room = tf.maximum(0.5 * side - reach, 0.0)
        distance = reach + _u(seed, _SHIFT + 100) * room
        shift = tf.cast(tf.round(tf.stack([tf.sin(direction), tf.cos(direction)])
                                 * distance), tf.int32)
        return mask, tf.roll(image, shift, axis=[0, 1])

    mask, changed = tf.switch_case(kind, [spot, scratch, patch])
    mask = tf.ensure_shape(mask, [height, width, 1])
    changed = tf.ensure_shape(tf.clip_by_value(changed, 0.0, 1.0), image.shape)
    return tf.where(mask > 0, changed, image), mask, kind
