"""The one model-input function (grdnet_tf.data.preprocess) against OpenCV, which the
training cache used before it and users' own tools use."""
import cv2
import numpy as np
import pytest
import tensorflow as tf

from grdnet_tf.data import preprocess


def _ours(image, size):
    return preprocess.model_input_uint8(image[None], size, image.shape[-1]).numpy()[0]


def _cv2(image, size, interpolation):
    out = cv2.resize(image, (size[1], size[0]), interpolation=interpolation)
    return out[..., None] if out.ndim == 2 else out


@pytest.mark.parametrize("shape,size", [((300, 400, 3), (128, 128)),  # tire -> cpu_small
                                        ((97, 131, 3), (32, 32)),
                                        ((250, 370, 1), (128, 128)),
                                        ((300, 400, 1), (128, 96))])
def test_shrinking_is_opencv_inter_area(shape, size):
    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    np.testing.assert_array_equal(_ours(image, size), _cv2(image, size, cv2.INTER_AREA))


def test_integer_factor_differs_from_opencv_only_by_rounding_of_halves():
    # A 2x2 mean can end in .5 exactly: OpenCV's integer-factor fast path rounds it up, ours
    # rounds the float result (which may land either side of the half).
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    diff = _ours(image, (32, 32)).astype(int) - _cv2(image, (32, 32), cv2.INTER_AREA)
    assert np.abs(diff).max() <= 1
    means = image.reshape(32, 2, 32, 2, 3).astype(np.float64).mean(axis=(1, 3))
    assert np.abs(_ours(image, (32, 32)) - means).max() <= 0.5 + 1e-3


def test_growing_is_linear_at_half_pixel_centres():
    image = np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    diff = _ours(image, (64, 64)).astype(int) - _cv2(image, (64, 64), cv2.INTER_LINEAR)
    assert np.abs(diff).max() <= 1  # OpenCV's 11-bit fixed-point coefficients
    row = preprocess.axis_weights(2, 4).numpy()  # source 2 px -> 4 px
    np.testing.assert_allclose(row, [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])


def test_axis_weights_rows_sum_to_one_and_area_weights_overlap():
    for n_in, n_out in ((400, 128), (128, 400), (7, 7), (5, 2)):
        w = preprocess.axis_weights(n_in, n_out).numpy()
        assert w.shape == (n_out, n_in)
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(preprocess.axis_weights(5, 2).numpy(),
                               [[0.4, 0.4, 0.2, 0, 0], [0, 0, 0.2, 0.4, 0.4]], atol=1e-7)
    np.testing.assert_array_equal(preprocess.axis_weights(7, 7).numpy(), np.eye(7))


def test_rgb_to_gray_is_opencv_bit_exact():
    image = np.random.default_rng(3).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    gray = preprocess.to_channels(tf.constant(image[None]), 1).numpy()[0, ..., 0]
    np.testing.assert_array_equal(gray, cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
    back = preprocess.to_channels(tf.constant(gray[None, ..., None]), 3).numpy()[0]
    np.testing.assert_array_equal(back, np.repeat(gray[..., None], 3, axis=-1))


def test_model_input_is_on_the_uint8_grid_and_float_inputs_agree():
    image = np.random.default_rng(4).integers(0, 256, (90, 70, 3), dtype=np.uint8)
    from_uint8 = preprocess.model_input(image[None], (32, 48), 3).numpy()
    from_float = preprocess.model_input(image[None].astype(np.float32) / 255.0, (32, 48),
                                        3).numpy()
    np.testing.assert_array_equal(from_uint8, from_float)
    np.testing.assert_allclose(from_uint8 * 255.0, np.round(from_uint8 * 255.0), atol=1e-4)
    assert from_uint8.dtype == np.float32 and from_uint8.shape == (1, 32, 48, 3)


def test_old_antialiased_bilinear_resize_differs_from_the_training_cache():
    # What scoring did before: tf.image.resize(bilinear, antialias=True), not INTER_AREA.
    image = cv2.GaussianBlur(np.random.default_rng(5).integers(0, 256, (300, 400, 3),
                                                               dtype=np.uint8), (3, 3), 0)
    old = tf.image.resize(image[None] / 255.0, (128, 128), method="bilinear",
                          antialias=True).numpy()[0]
    cache = _cv2(image, (128, 128), cv2.INTER_AREA) / 255.0
    assert np.abs(old - cache).max() > 2 / 255
    np.testing.assert_array_equal(_ours(image, (128, 128)), _cv2(image, (128, 128),
                                                                 cv2.INTER_AREA))


@pytest.mark.parametrize("shape,size", [((37, 53), (20, 16)), ((37, 53), (90, 100)),
                                        ((300, 400), (128, 128))])
def test_masks_are_nearest_exact_and_binary(shape, size):
    mask = (np.random.default_rng(6).random(shape) > 0.5).astype(np.uint8) * 255
    ours = preprocess.model_mask(mask[None], size).numpy()[0]
    expected = cv2.resize((mask > 0).astype(np.uint8), (size[1], size[0]),
                          interpolation=cv2.INTER_NEAREST_EXACT)
    np.testing.assert_array_equal(ours, expected)
    assert set(np.unique(ours)) <= {0.0, 1.0}


def test_resize_runs_in_a_graph_on_any_size():
    fn = tf.function(lambda x: preprocess.model_input(x, (16, 16), 1),
                     input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    for shape in ((2, 40, 30, 3), (1, 8, 9, 3)):
        assert fn(tf.zeros(shape, tf.uint8)).shape == (shape[0], 16, 16, 1)
    assert len(fn._list_all_concrete_functions()) == 1


def test_ties_round_the_same_in_eager_code_and_in_a_graph():
    # 2x2 means of uint8 values end in .5 for a quarter of the pixels: computed on grey
    # levels they are exact, so every summation order rounds them alike (half to even).
    image = np.random.default_rng(7).integers(0, 256, (2, 128, 96, 3), dtype=np.uint8)
    eager = preprocess.model_input(image, (64, 48), 3).numpy()
    graph = tf.function(lambda x: preprocess.model_input(x, (64, 48), 3),
                        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])(
        tf.constant(image)).numpy()
    np.testing.assert_array_equal(eager, graph)
    sums = image.reshape(2, 64, 2, 48, 2, 3).astype(np.int64).sum(axis=(2, 4))
    assert (sums % 4 == 2).mean() > 0.2                          # many exact ties
    np.testing.assert_array_equal(np.round(eager * 255.0), np.round(sums / 4.0))
