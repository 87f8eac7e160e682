"""Training and validation ``tf.data`` pipelines over a decoded image cache (docs/method.md §1).

All images are decoded once (OpenCV, a few threads) and resized with
`preprocess.model_input_uint8`, the resize every model input goes through, into a uint8
:class:`ImageCache`; the datasets gather from it, augment and synthesise in TensorFlow ops,
so there is no Python per sample and the stream depends only on ``config.seed``:

* element ``e`` of the training stream belongs to pass ``p = e // N`` and shows image
  ``index_shuffle(e % N, seed(config.seed, p))`` (a new permutation each pass);
* its augmentation and anomaly use the stateless seed ``fold_in(seed(config.seed,
  TRAIN_STREAM), e)``;
* batch ``k`` holds elements ``[k B, (k + 1) B)``, so ``start_step=k`` starts the counter
  at ``k B`` (nothing is decoded or synthesised for the skipped batches) and a resumed run
  continues the same stream.

Patch mode (``data.patch_scale > 0``, see grdnet_tf.data.tiling): the cache holds every image
at its working size (padded to the largest, with its true size), and an element is a
``data.image_size`` patch of it: a uniformly random one (``data.patch_sampling="random"``)
or, with ``"grid"``, the stream runs over the shuffled grid patches of all images (stride
``data.patch_stride``). The ROI is cropped with the image; augmentation and synthesis then
act on the patch as on a whole image. Validation uses the grid patches at stride = patch
size, in order.

Under ``tf.distribute`` the datasets are batched with the global batch size and shard by
DATA (every worker builds the same stream and keeps its share of the batches).
"""
import concurrent.futures
import dataclasses
import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

from grdnet_tf import choices, keys
from grdnet_tf.data import defects, io, perlin, preprocess, synthesis, textures, tiling

TRAIN_STREAM, VALIDATION_STREAM, SHUFFLE_STREAM = 0, 1, 2
TRAINING, DEFECTS = choices.CALIBRATION_ANOMALIES  # synthetic anomaly families
_PATCH_OFFSET = 100  # sub-seed tag of the random patch offset (synthesis uses 0..10)


@dataclasses.dataclass
class ImageCache:
    """Decoded images of one split.

    Args:
      images: uint8 ``[N, H, W, C]``: the model-size images, or in patch mode the
        working-size images zero-padded to the largest.
      rois: uint8 ``[N, H, W, 1]`` in {0, 1} (all ones where an image has no ROI file).
      paths: the N source image paths.
      sizes: int32 ``[N, 2]`` true (height, width) of each image (None: all full size).
    """
    images: np.ndarray
    rois: np.ndarray
    paths: list
    sizes: np.ndarray = None

    def __post_init__(self):
        if self.sizes is None:
            self.sizes = np.tile(np.asarray(self.images.shape[1:3], np.int32),
                                 (len(self.images), 1))

    def __len__(self):
        return len(self.paths)


def _read_sample(sample, image_size, channels, patch_scale=0.0, notes=None):
    native = io.read_image(sample.path, None, channels)
    if patch_scale > 0:
        size = tuple(int(v) for v in tiling.working_size(*native.shape[:2], patch_scale,
                                                          image_size))
    else:
        size = tuple(image_size)
    image = preprocess.model_input_uint8(native[None], size, channels).numpy()[0]
    if sample.roi_path is None:
        roi = np.ones(size, np.uint8)
    else:
        roi = io.read_mask(sample.roi_path, notes=notes, image_shape=native.shape)
        roi = preprocess.model_mask(roi[None], size).numpy()[0].astype(np.uint8)
        if not roi.any():
            raise ValueError(f"ROI mask {sample.roi_path} (of {sample.path}) is empty (all "
                             f"zero): fix or delete it (a missing ROI means the whole image)")
    return image, roi


def load_cache(samples, image_size, channels, skip_bad_files=False,
               patch_scale=0.0) -> ImageCache:
    """Decodes every sample (image and ROI) once and resizes it with `preprocess`.

    Args:
      samples: :class:`grdnet_tf.data.mvtec.Sample` list (or anything with ``path`` and
        ``roi_path``).
      image_size: (height, width) of the model input.
      channels: 1 or 3.
      skip_bad_files: skip unreadable images or ROIs (one warning with the count) instead
        of raising.
      patch_scale: 0 resizes every image to ``image_size``; > 0 keeps each at its working
        size (grdnet_tf.data.tiling.working_size) for patch training.
    ROI masks are checked against their images (`io.MaskNotes`: another aspect ratio is an
    error; resized and non-binary masks are counted in one warning).

    Raises:
      io.ImageReadError: an unreadable image or ROI file (unless skipped).
      ValueError: an all-zero ROI mask or one of another aspect ratio (never skipped);
        every file skipped.
    """
    height, width = int(image_size[0]), int(image_size[1])
    start = time.perf_counter()

    notes = io.MaskNotes("ROI")

    def read(sample):
        try:
            return _read_sample(sample, (height, width), channels, patch_scale, notes)
        except io.ImageReadError as e:
            if not skip_bad_files:
                raise
            return e

    workers = max(1, min(8, os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(read, samples))
    notes.warn()
    kept = [(s, r) for s, r in zip(samples, results) if not isinstance(r, Exception)]
    skipped = [r for r in results if isinstance(r, Exception)]
    if skipped:
        logging.warning("skipped %d of %d unreadable files (data.skip_bad_files), e.g. %s",
                        len(skipped), len(samples), "; ".join(str(e) for e in skipped[:3]))
        if not kept:
            raise ValueError(f"all {len(samples)} images were unreadable, e.g. {skipped[0]}")
    sizes = np.asarray([image.shape[:2] for _, (image, _) in kept], np.int32).reshape(-1, 2)
    max_h, max_w = (sizes.max(axis=0) if len(kept) else (height, width))
    images = np.zeros((len(kept), max_h, max_w, channels), np.uint8)
    rois = np.zeros((len(kept), max_h, max_w, 1), np.uint8)
    for i, (_, (image, roi)) in enumerate(kept):
        h, w = image.shape[:2]
        images[i, :h, :w], rois[i, :h, :w, 0] = image, roi
    logging.info("decoded %d images at %s in %.1f s", len(kept),
                 f"{height}x{width}" if not patch_scale else
                 f"working scale {patch_scale} (up to {max_h}x{max_w})",
                 time.perf_counter() - start)
    return ImageCache(images=images, rois=rois, paths=[s.path for s, _ in kept],
                      sizes=sizes)


@dataclasses.dataclass(frozen=True)
class _TextureSample:
    path: str
    roi_path: str = None


def load_textures(config):
    """The external textures of ``synthesis.texture_dir`` (searched recursively), decoded at
    ``data.image_size`` with ``data.channels``; None when texture_dir is ""."""
    texture_dir = config.synthesis.texture_dir
    if not texture_dir:
        return None
    if not os.path.isdir(texture_dir):
        raise FileNotFoundError(f"texture folder not found: synthesis.texture_dir="
                                f"{texture_dir}")
    paths = sorted(os.path.join(root, name) for root, _, names in os.walk(texture_dir)
                   for name in names if io.is_image_file(name))
    if not paths:
        raise ValueError(f"no images ({', '.join(io.IMAGE_EXTENSIONS)}) under "
                         f"synthesis.texture_dir={texture_dir}")
    samples = [_TextureSample(p) for p in paths]
    return load_cache(samples, config.data.image_size, config.data.channels,
                      config.data.skip_bad_files)


def _base_seed(config, stream):
    return tf.constant([int(config.seed), stream], tf.int64)


def _check_cache(cache, config, what, patches=False):
    expected = (*tuple(int(s) for s in config.data.image_size), int(config.data.channels))
    shape = cache.images.shape[1:]
    if patches:
        ok = (cache.images.ndim == 4 and shape[2] == expected[2]
              and (cache.sizes >= np.asarray(expected[:2])).all())
    else:
        ok = cache.images.ndim == 4 and shape == expected
    if not ok:
        raise ValueError(f"{what} images have shape {shape}, expected "
                         f"{'at least ' if patches else ''}{expected} (data.image_size, "
                         f"data.channels)")


def grid_patches(cache, patch_size, stride):
    """int32 [K, 3] (image index, y, x) of every grid patch of every cache image."""
    rows = []
    for index, (h, w) in enumerate(cache.sizes):
        offsets = tiling.grid(int(h), int(w), patch_size, stride).numpy()
        rows.append(np.concatenate([np.full((len(offsets), 1), index), offsets], axis=1))
    return np.concatenate(rows).astype(np.int32) if rows else np.zeros((0, 3), np.int32)


def items_per_epoch(config, cache):
    """Training elements in one epoch: the images, or in patch mode the grid patches."""
    if not tiling.patch_mode(config):
        return len(cache)
    return len(grid_patches(cache, tuple(config.data.image_size), tiling.patch_stride(config)))


def _centre_patches(cache, patch_size):
    """uint8 [N, H, W, C]: the centre patch of each working-size image (self-textures)."""
    out = np.zeros((len(cache), *patch_size, cache.images.shape[-1]), np.uint8)
    for i, (h, w) in enumerate(cache.sizes):
        y, x = (int(h) - patch_size[0]) // 2, (int(w) - patch_size[1]) // 2
        out[i] = cache.images[i, y:y + patch_size[0], x:x + patch_size[1]]
    return out


def synthesis_fn(config, cache, texture_cache=None, augment=True, stream=TRAIN_STREAM,
                 family=TRAINING, defect_area=(defects.AREA_MIN, defects.AREA_MAX)):
    """The per-example function ``(element_index int64, image_index) -> dict``.

    Returns float32 tensors of one example: IMAGE (augmented X), PERTURBED (X_n), MASK (M)
    and ROI, in [0, 1]. ``augment=False`` disables rotation and flips (validation).
    Randomness: stateless seed ``fold_in((config.seed, stream), element_index)``.
    Self-textures come from other images of ``cache`` (needs >= 2 images; in patch mode
    their centre patches), external ones from ``texture_cache``, built-in ones from
    grdnet_tf.data.textures (when synthesis.texture_builtin_weight > 0).
    In patch mode ``fn(element_index, image_index, offset=None)`` crops the patch at
    ``offset`` (y, x), or at a uniformly random offset when None.
    ``family="defects"`` draws grdnet_tf.data.defects' defect-like anomalies instead of the
    training synthesis (the calibration set's `scoring.calibration_anomalies`; every
    example then has one, of sizes ``defect_area`` = (min, max) fractions of the image).
    """
    choices.check("family", family, choices.CALIBRATION_ANOMALIES)
    params = synthesis.SynthesisParams.from_config(config)
    if not augment:
        params = dataclasses.replace(params, rotation_deg=0.0, flip_horizontal=False,
                                     flip_vertical=False)
    patches = tiling.patch_mode(config)
    patch_size = tuple(int(v) for v in config.data.image_size)
    _check_cache(cache, config, "cache", patches=patches)
    images = tf.constant(cache.images)
    rois = tf.constant(cache.rois)
    sizes = tf.constant(cache.sizes, tf.int32)
    if patches:
        bank = tf.constant(_centre_patches(cache, patch_size))
    else:
        bank = images
    self_bank = bank if len(cache) >= 2 else None
    external_bank = None
    if texture_cache is not None and len(texture_cache):
        _check_cache(texture_cache, config, "texture")
        external_bank = tf.constant(texture_cache.images)
    builtin_bank = None
    if params.texture_weights[synthesis.BUILTIN] > 0:
        builtin_bank = tf.constant(textures.builtin_textures(
            patch_size, config.data.channels, textures.BANK_SIZE, int(config.seed)))
    # Fail now, not inside tf.data, when no texture source is left.
    synthesis.source_probabilities(params, {synthesis.SELF: self_bank,
                                            synthesis.EXTERNAL: external_bank,
                                            synthesis.BUILTIN: builtin_bank})
    base_seed = _base_seed(config, stream)

    def fn(element_index, image_index, offset=None):
        seed = perlin.fold(base_seed, tf.cast(element_index, tf.int64))
        image = tf.gather(images, image_index)
        roi = tf.gather(rois, image_index)
        if patches:
            if offset is None:
                room = tf.gather(sizes, image_index) - tf.constant(patch_size, tf.int32) + 1
                u = perlin.uniform([2], perlin.fold(seed, _PATCH_OFFSET))
                offset = tf.minimum(tf.cast(u * tf.cast(room, tf.float32), tf.int32),
                                    room - 1)
            image = tiling.crop(image, offset, patch_size)
            roi = tiling.crop(roi, offset, patch_size)
        image = synthesis.to_float(image)
        roi = tf.cast(roi, tf.float32)
        image, roi = synthesis.augment_geometry(image, roi, seed, params)
        if family == DEFECTS:
            perturbed, mask, _ = defects.synthesize(image, seed, roi, defect_area)
        else:
            perturbed, mask = synthesis.synthesize(image, seed, params, self_bank=self_bank,
                                                   self_index=image_index,
                                                   external_bank=external_bank,
                                                   builtin_bank=builtin_bank, roi=roi)
        return {keys.IMAGE: image, keys.PERTURBED: perturbed, keys.MASK: mask, keys.ROI: roi}

    return fn


def _options():
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return options


def shuffled_index(config, element_index, num_images):
    """Image index of stream element ``element_index``: a fresh seeded permutation of the
    ``num_images`` images for each pass over them."""
    element_index = tf.cast(element_index, tf.int64)
    n = tf.constant(num_images, tf.int64)
    seed = perlin.fold(_base_seed(config, SHUFFLE_STREAM), element_index // n)
    return tf.random.experimental.index_shuffle(element_index % n, seed, n - 1)


def train_dataset(config, cache, global_batch_size, start_step=0, texture_cache=None):
    """Infinite training stream of batches ``{IMAGE, PERTURBED, MASK, ROI}``.

    Args:
      config: the run config (data, synthesis, seed).
      cache: training :class:`ImageCache`.
      global_batch_size: batch size over all replicas (drop_remainder=True).
      start_step: number of batches to skip (resuming): the result starts with batch
        ``start_step`` of the stream that ``start_step=0`` gives.
      texture_cache: external textures; None loads ``synthesis.texture_dir`` if set.
    Returns:
      ``tf.data.Dataset`` of dicts: IMAGE and PERTURBED float32 ``[B, H, W, C]`` in [0, 1],
      MASK and ROI float32 ``[B, H, W, 1]`` in {0, 1}.
    """
    if len(cache) == 0:
        raise ValueError("train_dataset: the training cache holds no images")
    if global_batch_size < 1 or start_step < 0:
        raise ValueError(f"global_batch_size={global_batch_size} must be >= 1 and "
                         f"start_step={start_step} >= 0")
    if texture_cache is None:
        texture_cache = load_textures(config)
    fn = synthesis_fn(config, cache, texture_cache, augment=True, stream=TRAIN_STREAM)
    if tiling.patch_mode(config) and config.data.patch_sampling == "grid":
        table = tf.constant(grid_patches(cache, tuple(config.data.image_size),
                                         tiling.patch_stride(config)))
        num_items = int(table.shape[0])

        @tf.autograph.experimental.do_not_convert
        def example(element_index):
            row = tf.gather(table, shuffled_index(config, element_index, num_items))
            return fn(element_index, row[0], row[1:])
    else:
        num_images = len(cache)

        @tf.autograph.experimental.do_not_convert  # explicit tf.cond/switch_case only
        def example(element_index):
            return fn(element_index, shuffled_index(config, element_index, num_images))

    ds = tf.data.Dataset.counter(start=int(start_step) * int(global_batch_size),
                                 dtype=tf.int64)
    ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(int(global_batch_size), drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def validation_dataset(config, cache, batch_size, texture_cache=None, repeats=1,
                       stream=VALIDATION_STREAM, family=TRAINING,
                       defect_area=(defects.AREA_MIN, defects.AREA_MAX)):
    """Deterministic passes over the validation images, in cache order.

    Fixed-seed anomalies (the same on every call), no rotation or flips, the last batch may
    be smaller (drop_remainder=False); same keys and dtypes as :func:`train_dataset`.
    Self-textures come from the validation images themselves (never from the test split).
    In patch mode the elements are the grid patches of each image at stride = patch size.
    `repeats` passes follow each other; element e shows item e % (items per pass) with the
    anomaly of seed (config.seed, `stream`, e), so every pass draws new anomalies.
    `family` / `defect_area`: as :func:`synthesis_fn` (the calibration set's anomalies).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if len(cache) == 0:
        logging.warning("validation_dataset: no validation images; the dataset is empty")
    if texture_cache is None:
        texture_cache = load_textures(config)
    fn = synthesis_fn(config, cache, texture_cache, augment=False, stream=stream,
                      family=family, defect_area=defect_area)
    if tiling.patch_mode(config) and len(cache):
        patch_size = tuple(config.data.image_size)
        table = tf.constant(grid_patches(cache, patch_size, min(patch_size)))
        count = int(table.shape[0])

        def element(i):
            row = table[i % count]
            return fn(i, row[0], row[1:])
    else:
        count = len(cache)

        def element(i):
            return fn(i, i % count)
    ds = tf.data.Dataset.range(count * int(repeats))
    ds = ds.map(tf.autograph.experimental.do_not_convert(element),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(int(batch_size), drop_remainder=False)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())
