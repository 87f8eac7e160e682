"""Patch geometry (grdnet_tf.data.tiling): grid offsets, working size, extraction, stitching."""
import numpy as np
import pytest
import tensorflow as tf

from grdnet_tf.data import tiling


@pytest.mark.parametrize("length,patch,stride,expected", [
    (300, 128, 64, [0, 64, 128, 172]), (400, 128, 64, [0, 64, 128, 192, 256, 272]),
    (128, 128, 64, [0]), (100, 128, 64, [0]), (256, 128, 128, [0, 128]),
    (257, 128, 128, [0, 128, 129])])
def test_grid_offsets_cover_the_axis_with_the_last_patch_flush(length, patch, stride,
                                                               expected):
    assert tiling.grid_offsets(length, patch, stride).numpy().tolist() == expected


@pytest.mark.parametrize("size,scale,expected", [((300, 400), 1.0, (300, 400)),
                                                 ((300, 400), 0.5, (150, 200)),
                                                 ((300, 400), 0.25, (128, 171)),
                                                 ((100, 630), 1.0, (128, 806))])
def test_working_size_keeps_the_aspect_and_fits_one_patch(size, scale, expected):
    got = tiling.working_size(size[0], size[1], scale, (128, 128))
    assert tuple(int(v) for v in got) == expected


def test_extract_equals_crop_and_stitch_of_a_constant_tiling_is_exact():
    image = tf.random.stateless_uniform((300, 400, 2), seed=(1, 2))
    offsets = tiling.grid(300, 400, (128, 96), 64)
    assert offsets.shape == (4 * 6, 2)
    patches = tiling.extract(image, offsets, (128, 96))
    for k in (0, 7, 23):
        np.testing.assert_array_equal(patches[k], tiling.crop(image, offsets[k], (128, 96)))
    # Patches cut from one image and stitched back give the image (every pixel covered).
    np.testing.assert_allclose(tiling.stitch(patches[..., 0], offsets, (300, 400)),
                               image[..., 0], atol=1e-6)


def test_stitch_averages_overlaps():
    maps = tf.stack([tf.zeros((4, 4)), tf.ones((4, 4))])
    out = tiling.stitch(maps, tf.constant([[0, 0], [0, 2]]), (4, 6)).numpy()
    np.testing.assert_array_equal(out[0], [0, 0, 0.5, 0.5, 1, 1])
