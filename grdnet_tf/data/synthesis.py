"""Synthetic anomalies and joint geometric augmentation of one example (docs/method.md §1).

Per example, in this order (**Decision**):

1. geometry on the clean image X and its ROI: rotation by U(-rotation_deg, rotation_deg)
   about the centre (REFLECT fill; bilinear for X, nearest for the ROI), then optional
   horizontal / vertical flips, each with probability 1/2;
2. synthesis on the *rotated* X: with probability q = anomaly_prob a Perlin mask M (random
   scale 2**k per axis, rotated, thresholded) and a texture N (uniform or smooth random
   colour field, another training image, Perlin colour noise, or an external texture, drawn
   with the texture_*_weight odds); beta ~ U(beta_min, beta_max) and

       X_n = (1 - M) X + (1 - beta) M X + beta M N,

   computed as ``where(M, (1 - beta) X + beta N, X)`` so that pixels outside M are X
   bit for bit; otherwise M = 0 and X_n = X exactly.

Synthesising after the geometry is equivalent to transforming (X, X_n, M, ROI) jointly,
except that M is then exactly the set of changed pixels (no interpolation at its border).
A Perlin field that never exceeds the threshold is rescaled to peak 1 (sign chosen by the
larger extreme) before thresholding, so an anomalous sample never has an empty mask.

All randomness is stateless (see grdnet_tf.data.perlin) and derived from one per-example
seed, so an example depends only on (config.seed, stream, element index).
"""
import dataclasses
import math

import tensorflow as tf

from grdnet_tf.data import geometry, perlin, preprocess, texture_ops

# Sources of the texture N.
COLOUR, SELF, PERLIN, EXTERNAL, BUILTIN = 0, 1, 2, 3, 4
SOURCE_NAMES = ("colour", "self", "perlin", "external", "builtin")

# Sub-seed tags folded into the per-example seed.
(_ROTATE, _FLIP_H, _FLIP_V, _ANOMALY, _MASK, _BETA, _SOURCE, _TEXTURE,
 _SMOOTH, _CELLS_Y, _CELLS_X, _TEXTURE_OPS, _AREA, _IN_ROI, _MATCH) = range(15)
# Noise value given to pixels a mask may not cover (Perlin noise lies in about [-1, 1]).
_EXCLUDED = -4.0


@dataclasses.dataclass(frozen=True)
class SynthesisParams:
    """The ``synthesis.*`` config values (documented and validated in grdnet_tf/config.py)."""
    anomaly_prob: float
    perlin_min_scale_log2: int
    perlin_max_scale_log2: int
    perlin_threshold: float
    perlin_rotation_deg: float
    beta_min: float
    beta_max: float
    texture_weights: tuple  # (colour, self, perlin, external, builtin)
    texture_ops: int
    mask_area_min: float
    mask_area_max: float
    in_roi_prob: float
    match_intensity_prob: float
    colour_smooth_prob: float
    colour_field_min_cells: int
    colour_field_max_cells: int
    rotation_deg: float
    flip_horizontal: bool
    flip_vertical: bool

    @classmethod
    def from_config(cls, config):
        """From a config that passed `grdnet_tf.config.validate`, which checks every range."""
        s = config.synthesis
        return cls(
            anomaly_prob=float(s.anomaly_prob),
            perlin_min_scale_log2=int(s.perlin_min_scale_log2),
            perlin_max_scale_log2=int(s.perlin_max_scale_log2),
            perlin_threshold=float(s.perlin_threshold),
            perlin_rotation_deg=float(s.perlin_rotation_deg),
            beta_min=float(s.beta_min), beta_max=float(s.beta_max),
            texture_weights=tuple(float(s[f"texture_{name}_weight"])
                                  for name in SOURCE_NAMES),
            texture_ops=int(s.texture_ops),
            mask_area_min=float(s.mask_area_min), mask_area_max=float(s.mask_area_max),
            in_roi_prob=float(s.in_roi_prob),
            match_intensity_prob=float(s.match_intensity_prob),
            colour_smooth_prob=float(s.colour_smooth_prob),
            colour_field_min_cells=int(s.colour_field_min_cells),
            colour_field_max_cells=int(s.colour_field_max_cells),
            rotation_deg=float(s.rotation_deg),
            flip_horizontal=bool(s.flip_horizontal), flip_vertical=bool(s.flip_vertical))


def to_float(image_uint8):
    """uint8 -> float32 in [0, 1]."""
    return preprocess.to_unit(image_uint8)


def _coin(seed, tag, prob=0.5):
    return perlin.uniform([], perlin.fold(seed, tag)) < prob


def augment_geometry(image, roi, seed, params):
    """Joint rotation and flips of ``image [H, W, C]`` and ``roi [H, W, 1]`` (float32).

    Rotation by U(-rotation_deg, rotation_deg) about the centre with REFLECT fill (bilinear
    for the image, nearest for the ROI, which stays binary); then each enabled flip with
    probability 1/2. rotation_deg = 0 skips the rotation (exact identity).
    """
    if params.rotation_deg > 0:
        limit = math.radians(params.rotation_deg)
        angle = perlin.uniform([], perlin.fold(seed, _ROTATE), -limit, limit)
        image = tf.clip_by_value(geometry.rotate(image, angle, "BILINEAR"), 0.0, 1.0)
        roi = geometry.rotate(roi, angle, "NEAREST")
    for enabled, tag, axis in ((params.flip_horizontal, _FLIP_H, 1),
                               (params.flip_vertical, _FLIP_V, 0)):
        if enabled:
            flip = _coin(seed, tag)
            image = tf.where(flip, tf.reverse(image, [axis]), image)
            roi = tf.where(flip, tf.reverse(roi, [axis]), roi)
    return image, roi


def anomaly_mask(height, width, seed, params, roi=None):
    """Non-empty binary Perlin mask ``float32 [H, W, 1]``.

    With ``roi`` (float ``[H, W, 1]``) and probability in_roi_prob the mask is confined to
    the ROI (when the ROI is not empty). With mask_area_max > 0 the noise is thresholded at
    the value that leaves a fraction a of the image's pixels above it, log(a) uniform in
    [log mask_area_min, log mask_area_max] (at most the allowed pixels); otherwise at
    perlin_threshold, a field that never exceeds it being rescaled to peak 1 first.
    """
    noise = perlin.random_perlin_noise(height, width, seed, params.perlin_min_scale_log2,
                                       params.perlin_max_scale_log2)[:, :, None]
    if params.perlin_rotation_deg > 0:
        limit = math.radians(params.perlin_rotation_deg)
        angle = perlin.uniform([], perlin.fold(seed, _ROTATE), -limit, limit)
        noise = geometry.rotate(noise, angle, "BILINEAR")
    allowed = tf.ones_like(noise, tf.bool)
    if roi is not None and params.in_roi_prob > 0:
        inside = roi > 0
        confine = tf.logical_and(_coin(seed, _IN_ROI, params.in_roi_prob),
                                 tf.reduce_any(inside))
        allowed = tf.logical_or(tf.logical_not(confine), inside)
    if params.mask_area_max > 0:
        area = tf.exp(perlin.uniform([], perlin.fold(seed, _AREA),
                                     math.log(params.mask_area_min),
                                     math.log(params.mask_area_max)))
        candidates = tf.reshape(tf.where(allowed, noise, _EXCLUDED), [-1])
        count = tf.reduce_sum(tf.cast(allowed, tf.int32))
        k = tf.clip_by_value(tf.cast(tf.round(area * height * width), tf.int32), 1, count)
        threshold = tf.sort(candidates, direction="DESCENDING")[k - 1]
        return tf.cast(tf.logical_and(noise >= threshold, allowed), tf.float32)
    high = tf.reduce_max(tf.where(allowed, noise, _EXCLUDED))
    low = -tf.reduce_min(tf.where(allowed, noise, -_EXCLUDED))
    peak = tf.maximum(tf.maximum(high, low), 1e-6)
    rescaled = noise * tf.where(high >= low, 1.0, -1.0) / peak
    noise = tf.where(high > params.perlin_threshold, noise, rescaled)
    return tf.cast(tf.logical_and(noise > params.perlin_threshold, allowed), tf.float32)


def colour_texture(shape, seed, params):
    """A uniform random colour, or (probability colour_smooth_prob) a smooth random field:
    a random grid of colour_field_{min,max}_cells cells per axis upsampled bilinearly."""
    height, width, channels = shape

    def uniform_colour():
        colour = perlin.uniform([1, 1, channels], perlin.fold(seed, _TEXTURE))
        return tf.broadcast_to(colour, shape)

    def smooth_field():
        cells = [tf.random.stateless_uniform([], perlin.fold(seed, tag),
                                             minval=params.colour_field_min_cells,
                                             maxval=params.colour_field_max_cells + 1,
                                             dtype=tf.int32, alg=perlin.ALG)
                 for tag in (_CELLS_Y, _CELLS_X)]
        grid = perlin.uniform(tf.stack([cells[0], cells[1], channels]),
                              perlin.fold(seed, _TEXTURE))
        field = tf.image.resize(grid, [height, width], method="bilinear")
        return tf.ensure_shape(tf.clip_by_value(field, 0.0, 1.0), shape)

    if params.colour_smooth_prob <= 0:
        return uniform_colour()
    if params.colour_smooth_prob >= 1:
        return smooth_field()
    return tf.cond(_coin(seed, _SMOOTH, params.colour_smooth_prob), smooth_field,
                   uniform_colour)


def perlin_texture(shape, seed, params):
    """Perlin colour noise: one Perlin field per channel (a shared random scale), each
    min-max normalised to [0, 1]."""
    height, width, channels = shape
    noise = perlin.random_perlin_noise(height, width, seed, params.perlin_min_scale_log2,
                                       params.perlin_max_scale_log2, batch=channels)
    low = tf.reduce_min(noise, axis=[1, 2], keepdims=True)
    high = tf.reduce_max(noise, axis=[1, 2], keepdims=True)
    return tf.transpose((noise - low) / tf.maximum(high - low, 1e-6), [1, 2, 0])


def bank_texture(bank, seed, exclude=None):
    """A random image of ``bank`` (uint8 ``[N, H, W, C]`` tensor), randomly rolled (circular
    shift) so its content does not line up with the target; with ``exclude`` (an index into
    the same bank, needs N >= 2) a different image than that one."""
    n = tf.shape(bank, out_type=tf.int64)[0]
    if exclude is None:
        index = tf.random.stateless_uniform([], perlin.fold(seed, 0), minval=0, maxval=n,
                                            dtype=tf.int64, alg=perlin.ALG)
    else:
        offset = tf.random.stateless_uniform([], perlin.fold(seed, 0), minval=1, maxval=n,
                                             dtype=tf.int64, alg=perlin.ALG)
        index = (tf.cast(exclude, tf.int64) + offset) % n
    image = to_float(tf.gather(bank, index))
    shift = tf.random.stateless_uniform([2], perlin.fold(seed, 1), minval=0,
                                        maxval=tf.int32.max, dtype=tf.int32, alg=perlin.ALG)
    shift = shift % tf.shape(image)[:2]
    return tf.roll(image, shift, axis=[0, 1])


def match_intensity(texture, image, mask):
    """``texture`` shifted and scaled per channel so that, over the pixels of ``mask``, its
    mean and standard deviation equal the image's there; clipped to [0, 1].

    An anomaly then differs from its surroundings in structure, not in brightness, so it
    cannot be found from X_n alone by a brightness rule (a bright texture on a dark tyre).
    """
    weight = mask / tf.maximum(tf.reduce_sum(mask), 1.0)

    def moments(x):
        mean = tf.reduce_sum(x * weight, axis=[0, 1], keepdims=True)
        var = tf.reduce_sum(tf.square(x - mean) * weight, axis=[0, 1], keepdims=True)
        return mean, tf.sqrt(var + 1e-8)

    t_mean, t_std = moments(texture)
    i_mean, i_std = moments(image)
    return tf.clip_by_value((texture - t_mean) * (i_std / t_std) + i_mean, 0.0, 1.0)


def source_probabilities(params, banks):
    """Normalised odds of the sources of SOURCE_NAMES, given ``banks`` (source -> bank or
    None for the bank sources SELF, EXTERNAL, BUILTIN); a source without its bank gets 0."""
    weights = [0.0 if source in (SELF, EXTERNAL, BUILTIN) and banks.get(source) is None
               else weight for source, weight in enumerate(params.texture_weights)]
    total = sum(weights)
    if total <= 0:
        available = [SOURCE_NAMES[s] for s in (SELF, EXTERNAL, BUILTIN)
                     if banks.get(s) is not None]
        raise ValueError("config synthesis.texture_*_weight: every available texture source "
                         f"has weight 0 (weights {dict(zip(SOURCE_NAMES, params.texture_weights))}"
                         f", banks available: {', '.join(available) or 'none'})")
    return [w / total for w in weights]


def synthesize(image, seed, params, self_bank=None, self_index=None, external_bank=None,
               builtin_bank=None, roi=None):
    """Perturbs ``image`` (float32 ``[H, W, C]`` in [0, 1]) with a synthetic anomaly.

    Args:
      image: the (already augmented) clean image X.
      seed: per-example stateless seed ``[2]``.
      params: :class:`SynthesisParams`.
      self_bank: uint8 ``[N, H, W, C]`` training images for self-textures (N >= 2), or None.
      self_index: index of ``image`` in ``self_bank`` (excluded from the draw).
      external_bank: uint8 ``[K, H, W, C]`` external textures, or None.
      builtin_bank: uint8 ``[K, H, W, C]`` built-in photo crops
        (grdnet_tf.data.textures), or None.
      roi: float32 ``[H, W, 1]`` ROI of ``image`` (for in_roi_prob), or None.
    Returns:
      (perturbed X_n, mask M): float32 ``[H, W, C]`` in [0, 1] and ``[H, W, 1]`` in {0, 1}.
      The texture gets ``params.texture_ops`` random photometric operations
      (grdnet_tf.data.texture_ops) before blending.
    """
    shape = tuple(image.shape)
    height, width, _ = shape
    banks = {SELF: self_bank, EXTERNAL: external_bank, BUILTIN: builtin_bank}
    probs = source_probabilities(params, banks)
    texture_seed = perlin.fold(seed, _TEXTURE)
    makers = {
        COLOUR: lambda: colour_texture(shape, texture_seed, params),
        SELF: lambda: bank_texture(self_bank, texture_seed, exclude=self_index),
        PERLIN: lambda: perlin_texture(shape, texture_seed, params),
        EXTERNAL: lambda: bank_texture(external_bank, texture_seed),
        BUILTIN: lambda: bank_texture(builtin_bank, texture_seed),
    }
    sources = [s for s in range(len(SOURCE_NAMES)) if probs[s] > 0]

    def texture():
        if len(sources) == 1:
            chosen = makers[sources[0]]()
        else:
            u = perlin.uniform([], perlin.fold(seed, _SOURCE))
            bounds = tf.constant([sum(probs[t] for t in sources[:i + 1])
                                  for i in range(len(sources) - 1)], tf.float32)
            branch = tf.reduce_sum(tf.cast(u >= bounds, tf.int32))
            chosen = tf.switch_case(branch, [makers[s] for s in sources])
        return texture_ops.augment(chosen, perlin.fold(seed, _TEXTURE_OPS), params.texture_ops)

    def anomalous():
        mask = anomaly_mask(height, width, perlin.fold(seed, _MASK), params, roi)
        beta = perlin.uniform([], perlin.fold(seed, _BETA), params.beta_min, params.beta_max)
        n = texture()
        if params.match_intensity_prob > 0:
            n = tf.where(_coin(seed, _MATCH, params.match_intensity_prob),
                         match_intensity(n, image, mask), n)
        blended = tf.clip_by_value((1.0 - beta) * image + beta * n, 0.0, 1.0)
        return tf.where(mask > 0, blended, image), mask

    def clean():
        return image, tf.zeros([height, width, 1], tf.float32)

    if params.anomaly_prob <= 0:
        return clean()
    if params.anomaly_prob >= 1:
        return anomalous()
    return tf.cond(_coin(seed, _ANOMALY, params.anomaly_prob), anomalous, clean)
