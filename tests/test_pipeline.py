"""Training / validation tf.data pipelines (grdnet_tf.data.pipeline), 32x32, tiny caches.

Distribution is not tested here (logical CPU devices must be configured before TensorFlow
initialises); the trainer tests it in a subprocess.
"""
import numpy as np
import pytest
import tensorflow as tf

from grdnet_tf import keys
from grdnet_tf.config import base_config
from grdnet_tf.data import pipeline, preprocess
from helpers_images import random_images

SIZE, N, BATCH = 32, 5, 4
KEYS = (keys.IMAGE, keys.PERTURBED, keys.MASK, keys.ROI)


def make_cache(n=N, channels=3, seed=0):
    rois = np.zeros((n, SIZE, SIZE, 1), np.uint8)
    rois[:, 4:28, 6:26] = 1
    return pipeline.ImageCache(random_images((n, SIZE, SIZE, channels), seed, np.uint8),
                               rois, [f"img{i}.png" for i in range(n)])


def make_config(**synthesis):
    c = base_config()
    c.seed = 7
    c.data.image_size = (SIZE, SIZE)
    c.synthesis.update(synthesis)
    return c


def take(ds, n):
    return [{k: v.numpy() for k, v in b.items()} for b in ds.take(n)]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for k in KEYS:
            np.testing.assert_array_equal(x[k], y[k])


CACHE = make_cache()
CONFIG = make_config()


@pytest.fixture(scope="module")
def stream():
    """The dataset and its first 4 batches for CONFIG, CACHE, BATCH."""
    ds = pipeline.train_dataset(CONFIG, CACHE, BATCH)
    return ds, take(ds, 4)


def test_train_batch_structure(stream):
    ds, (batch, *_) = stream
    assert ds.element_spec[keys.IMAGE].shape == (BATCH, SIZE, SIZE, 3)
    assert sorted(batch) == sorted(KEYS)
    for k in KEYS:
        assert batch[k].dtype == np.float32
        assert 0.0 <= batch[k].min() and batch[k].max() <= 1.0
    assert batch[keys.PERTURBED].shape == (BATCH, SIZE, SIZE, 3)
    for k in (keys.MASK, keys.ROI):
        assert batch[k].shape == (BATCH, SIZE, SIZE, 1)
        assert set(np.unique(batch[k])) <= {0.0, 1.0}
    outside = np.broadcast_to(batch[keys.MASK] == 0, batch[keys.IMAGE].shape)
    np.testing.assert_array_equal(batch[keys.PERTURBED][outside], batch[keys.IMAGE][outside])
    assert tf.data.experimental.cardinality(ds) == tf.data.experimental.INFINITE_CARDINALITY


def test_same_seed_same_stream_and_resume(stream):
    _, batches = stream
    # A new dataset with the same seed, resumed at step 3, continues the same stream.
    assert_same(batches[3:], take(pipeline.train_dataset(CONFIG, CACHE, BATCH, start_step=3), 1))
    other = make_config()
    other.seed = 8
    (first,) = take(pipeline.train_dataset(other, CACHE, BATCH), 1)
    assert not np.array_equal(first[keys.IMAGE], batches[0][keys.IMAGE])


def test_every_pass_is_a_new_permutation():
    config = make_config(anomaly_prob=0.0, rotation_deg=0.0)
    images = np.concatenate([b[keys.IMAGE] for b in
                             take(pipeline.train_dataset(config, CACHE, 1), 3 * N)])
    expected = CACHE.images.astype(np.float32) * preprocess.UNIT
    order = [int(np.argmin(np.abs(expected - x).reshape(N, -1).max(axis=1))) for x in images]
    np.testing.assert_array_equal(images, expected[order])  # unaugmented images, exactly
    passes = [order[i * N:(i + 1) * N] for i in range(3)]
    assert all(sorted(p) == list(range(N)) for p in passes)
    assert len({tuple(p) for p in passes}) > 1


def test_validation_dataset_fixed_and_unrotated():
    a = take(pipeline.validation_dataset(CONFIG, CACHE, BATCH), 10)
    b = take(pipeline.validation_dataset(CONFIG, CACHE, BATCH), 10)
    assert [x[keys.IMAGE].shape[0] for x in a] == [4, 1]  # drop_remainder=False
    assert_same(a, b)
    images = np.concatenate([x[keys.IMAGE] for x in a])
    np.testing.assert_array_equal(images, CACHE.images.astype(np.float32) * preprocess.UNIT)
    rois = np.concatenate([x[keys.ROI] for x in a])
    np.testing.assert_array_equal(rois, CACHE.rois.astype(np.float32))
    masks = np.concatenate([x[keys.MASK] for x in a])
    assert 0 < (masks.reshape(N, -1).max(axis=1) > 0).sum() <= N


def test_synthesis_fn_single_example():
    fn = pipeline.synthesis_fn(CONFIG, CACHE)
    example = fn(tf.constant(3, tf.int64), 2)
    assert example[keys.IMAGE].shape == (SIZE, SIZE, 3)
    assert example[keys.ROI].shape == (SIZE, SIZE, 1)
    again = tf.function(fn)(tf.constant(3, tf.int64), tf.constant(2))
    for k in (keys.MASK, keys.ROI):
        np.testing.assert_array_equal(example[k].numpy(), again[k].numpy())
    for k in (keys.IMAGE, keys.PERTURBED):  # graph rewrites may change the last bit
        np.testing.assert_allclose(example[k].numpy(), again[k].numpy(), atol=1e-6)


def test_grayscale_and_single_image():
    config = make_config(anomaly_prob=1.0)
    config.data.channels = 1
    (batch,) = take(pipeline.train_dataset(config, make_cache(n=1, channels=1), 2), 1)
    assert batch[keys.IMAGE].shape == (2, SIZE, SIZE, 1)
    assert batch[keys.MASK].reshape(2, -1).max(axis=1).min() == 1.0  # q = 1


def test_external_textures(tmp_path, write_image):
    for seed, name in enumerate(("a/one.jpg", "b/two.png")):
        write_image(tmp_path / "tex" / name, random_images((40, 50, 3), seed, np.uint8))
    config = make_config(anomaly_prob=1.0, texture_colour_weight=0.0, texture_self_weight=0.0,
                         texture_perlin_weight=0.0, texture_dir=str(tmp_path / "tex"))
    textures = pipeline.load_textures(config)
    assert textures.images.shape == (2, SIZE, SIZE, 3)
    (batch,) = take(pipeline.train_dataset(config, CACHE, 2), 1)
    assert (batch[keys.PERTURBED] != batch[keys.IMAGE]).any()
    assert pipeline.load_textures(make_config()) is None


def test_bad_arguments():
    with pytest.raises(ValueError, match="no images"):
        pipeline.train_dataset(CONFIG, make_cache(n=0), 2)
    wrong = make_config()
    wrong.data.image_size = (16, 16)
    with pytest.raises(ValueError, match="image_size"):
        pipeline.train_dataset(wrong, CACHE, 2)
    with pytest.raises(FileNotFoundError, match="texture"):
        pipeline.train_dataset(make_config(texture_dir="/nonexistent/tex"), CACHE, 2)
