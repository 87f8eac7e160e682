"""GRD-Net losses (grdnet_tf.losses, docs/method.md §3) against hand values and numpy
references."""
import math

import numpy as np
import pytest
import tensorflow as tf

from grdnet_tf import losses
from grdnet_tf.config import base_config

C1, C2 = 0.01 ** 2, 0.03 ** 2  # SSIM constants for max_val = 1


def _const(value, shape=(1, 32, 32, 3)):
    return tf.fill(shape, float(value))


def _np_ssim(x, y, size=11, sigma=1.5):
    """Per-image SSIM: 11x11 Gaussian window (σ 1.5), valid positions, channel mean."""
    coords = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-coords ** 2 / (2 * sigma ** 2))
    window = np.outer(g, g) / np.outer(g, g).sum()

    def filt(a):  # a: [H, W] -> valid 2-D correlation with the window
        views = np.lib.stride_tricks.sliding_window_view(a, (size, size))
        return np.einsum("ijkl,kl->ij", views, window)

    out = []
    for xi, yi in zip(x.astype(np.float64), y.astype(np.float64)):
        per_channel = []
        for c in range(xi.shape[-1]):
            a, b = xi[..., c], yi[..., c]
            mu_a, mu_b = filt(a), filt(b)
            var_a = filt(a * a) - mu_a ** 2
            var_b = filt(b * b) - mu_b ** 2
            cov = filt(a * b) - mu_a * mu_b
            ssim_map = ((2 * mu_a * mu_b + C1) * (2 * cov + C2)
                        / ((mu_a ** 2 + mu_b ** 2 + C1) * (var_a + var_b + C2)))
            per_channel.append(ssim_map.mean())
        out.append(np.mean(per_channel))
    return np.array(out)


def _np_focal(target, prediction, gamma=2.0, alpha=None):
    """FL = -alpha_t (1 - p_t)^γ log p_t, mean over the pixels of each example."""
    p = np.clip(prediction.astype(np.float64), 1e-7, 1 - 1e-7)
    p_t = np.where(target > 0.5, p, 1 - p)
    fl = -((1 - p_t) ** gamma) * np.log(p_t)
    if alpha is not None:
        fl *= np.where(target > 0.5, alpha, 1 - alpha)
    return fl.reshape(len(fl), -1).mean(axis=1)


def test_contextual_zero_for_identical_images():
    x = tf.random.stateless_uniform((2, 32, 32, 3), seed=(1, 2))
    np.testing.assert_allclose(losses.l1_loss(x, x), [0, 0], atol=1e-7)
    np.testing.assert_allclose(losses.ssim_loss(x, x), [0, 0], atol=1e-6)
    np.testing.assert_allclose(losses.contextual_loss(x, x, 3.0, 5.0), [0, 0], atol=1e-5)


def test_contextual_hand_values():
    # Constant images 0.125 vs 0.25 and 0 vs 0.25: zero variances, so SSIM is the luminance
    # term (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1). (float32 convolutions leave ~1e-8 of
    # variance on constant images, which the small C2 turns into ~3e-5: atol 1e-4.)
    x = tf.concat([_const(0.125), _const(0.0)], axis=0)
    x_hat = tf.concat([_const(0.25), _const(0.25)], axis=0)
    l1 = np.array([0.125, 0.25])
    ssim = np.array([(2 * 0.125 * 0.25 + C1) / (0.125 ** 2 + 0.25 ** 2 + C1),  # 0.800256
                     C1 / (0.25 ** 2 + C1)])                                   # 0.001597
    np.testing.assert_allclose(losses.l1_loss(x, x_hat), l1, rtol=1e-6)
    np.testing.assert_allclose(losses.ssim_loss(x, x_hat), 1 - ssim, atol=1e-4)
    np.testing.assert_allclose(losses.contextual_loss(x, x_hat, w_l1=2.0, w_ssim=3.0),
                               2.0 * l1 + 3.0 * (1 - ssim), atol=3e-4)
    np.testing.assert_allclose(losses.contextual_loss(x, x_hat), [0.125 + 1 - 0.8002557,
                                                                  0.25 + 1 - 0.0015974],
                               atol=1e-4)


def test_ssim_is_tf_image_ssim_with_an_11x11_gaussian():
    rng = np.random.default_rng(0)
    x = rng.random((2, 32, 32, 3), dtype=np.float32)
    y = np.clip(x + rng.normal(0, 0.2, x.shape), 0, 1).astype(np.float32)
    got = losses.ssim_loss(x, y).numpy()
    np.testing.assert_allclose(got, 1 - tf.image.ssim(x, y, max_val=1.0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(got, 1 - _np_ssim(x, y), rtol=1e-4)
    # float16 inputs (mixed precision) are computed in float32.
    half = losses.ssim_loss(tf.cast(x, tf.float16), tf.cast(y, tf.float16))
    assert half.dtype == tf.float32


def test_feature_matching():
    f = tf.random.stateless_normal((2, 4, 4, 8), seed=(3, 4))
    np.testing.assert_allclose(losses.adversarial_loss(f, f), [0, 0], atol=0)
    real = tf.zeros((2, 2, 2, 1))
    fake = tf.constant([1.0, 2.0])[:, None, None, None] * tf.ones((2, 2, 2, 1))
    np.testing.assert_allclose(losses.adversarial_loss(real, fake), [1.0, 4.0])
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(3, 5, 5, 6)), rng.normal(size=(3, 5, 5, 6))
    np.testing.assert_allclose(losses.adversarial_loss(a, b),
                               ((a - b) ** 2).reshape(3, -1).mean(1), rtol=1e-5)


def test_encoder_loss_l2_and_l1():
    z = tf.constant([[3.0, -4.0], [1.0, 1.0]])
    z_hat = tf.zeros_like(z)
    np.testing.assert_allclose(losses.encoder_loss(z, z_hat), [12.5, 1.0])
    np.testing.assert_allclose(losses.encoder_loss(z, z_hat, "l2"), [12.5, 1.0])
    np.testing.assert_allclose(losses.encoder_loss(z, z_hat, "l1"), [3.5, 1.0])


def test_discriminator_bce_hand_values():
    zeros = tf.zeros((3, 1))
    np.testing.assert_allclose(losses.discriminator_loss(zeros, zeros), [2 * math.log(2)] * 3,
                               rtol=1e-6)
    # real logit 2 -> ln(1 + e^-2); fake logit -1 -> ln(1 + e^-1).
    got = losses.discriminator_loss(tf.constant([[2.0]]), tf.constant([[-1.0]]))
    np.testing.assert_allclose(got, [math.log1p(math.exp(-2)) + math.log1p(math.exp(-1))],
                               rtol=1e-6)
    assert abs(float(got[0]) - 0.4401897) < 1e-6
    # A confident, correct discriminator has a loss near 0; a fooled one a large loss.
    assert float(losses.discriminator_loss(tf.constant([[20.0]]), tf.constant([[-20.0]]))[0]) < 1e-8
    assert float(losses.discriminator_loss(tf.constant([[-5.0]]), tf.constant([[5.0]]))[0]) > 10


@pytest.mark.parametrize("alpha", [-1.0, 0.25])
def test_focal_loss_matches_numpy(alpha):
    rng = np.random.default_rng(2)
    target = (rng.random((3, 8, 8, 1)) > 0.7).astype(np.float32)
    prediction = rng.uniform(0.02, 0.98, (3, 8, 8, 1)).astype(np.float32)
    got = losses.focal_loss(target, prediction, gamma=2.0, alpha=alpha).numpy()
    want = _np_focal(target, prediction, 2.0, None if alpha < 0 else alpha)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # γ = 0 without balancing is the binary cross-entropy.
    bce = -np.where(target > 0.5, np.log(prediction), np.log(1 - prediction)).reshape(3, -1)
    np.testing.assert_allclose(losses.focal_loss(target, prediction, gamma=0.0),
                               bce.mean(1), rtol=1e-5)


def test_focal_loss_hand_value():
    # p_t = 0.8 for the positive pixel, 0.1 for the negative one.
    got = losses.focal_loss(tf.constant([[[[1.0], [0.0]]]]), tf.constant([[[[0.8], [0.9]]]]))
    want = (0.2 ** 2 * -math.log(0.8) + 0.9 ** 2 * -math.log(0.1)) / 2
    np.testing.assert_allclose(got, [want], rtol=1e-5)
    assert abs(want - 0.9370098) < 1e-6


def test_roi_mode_target_vs_prediction():
    # Pixel 0 inside the ROI with a defect (M = 1), A = 0.8; pixel 1 outside the ROI where the
    # Perlin mask also fired (M = 1, but M·ROI = 0), A = 0.9.
    anomaly_map = tf.constant([[[[0.8], [0.9]]]])
    mask = tf.constant([[[[1.0], [1.0]]]])
    roi = tf.constant([[[[1.0], [0.0]]]])
    inside = 0.2 ** 2 * -math.log(0.8)
    target = losses.segmentation_loss(anomaly_map, mask, roi, roi_mode="target")
    prediction = losses.segmentation_loss(anomaly_map, mask, roi, roi_mode="prediction")
    # target mode: the positive prediction outside the ROI is penalised as a false positive.
    np.testing.assert_allclose(target, [(inside + 0.81 * -math.log(0.1)) / 2], rtol=1e-5)
    # prediction mode: A·ROI = 0 outside, nothing to penalise there.
    np.testing.assert_allclose(prediction, [inside / 2], rtol=1e-4)
    assert float(target[0]) > 100 * float(prediction[0])
    with pytest.raises(ValueError, match="roi_mode"):
        losses.segmentation_loss(anomaly_map, mask, roi, roi_mode="both")


def test_generator_total_uses_the_weights():
    rng = np.random.default_rng(3)
    x = rng.random((2, 32, 32, 3), dtype=np.float32)
    x_hat = rng.random((2, 32, 32, 3), dtype=np.float32)
    z, z_hat = rng.normal(size=(2, 4, 4, 4)), rng.normal(size=(2, 4, 4, 4))
    f_real, f_fake = rng.normal(size=(2, 8, 8, 8)), rng.normal(size=(2, 8, 8, 8))
    weights = losses.LossWeights(w_adv=2.0, w_con=7.0, w_enc=0.5, w_l1=3.0, w_ssim=0.25,
                                 enc_norm="l1")
    out = losses.generator_losses(x, x_hat, z, z_hat, f_real, f_fake, weights)

    l1 = np.abs(x - x_hat).reshape(2, -1).mean(1)
    ssim = 1 - _np_ssim(x, x_hat)
    adv = ((f_real - f_fake) ** 2).reshape(2, -1).mean(1)
    enc = np.abs(z - z_hat).reshape(2, -1).mean(1)
    con = 3.0 * l1 + 0.25 * ssim
    for name, want in (("l1", l1), ("ssim", ssim), ("contextual", con), ("adversarial", adv),
                       ("encoder", enc), ("generator", 2.0 * adv + 7.0 * con + 0.5 * enc)):
        np.testing.assert_allclose(out[name], want, rtol=1e-4, err_msg=name)
    assert all(v.shape == (2,) and v.dtype == tf.float32 for v in out.values())


def test_loss_weights_from_config():
    config = base_config()
    config.loss.w_con = 7.0
    config.loss.enc_norm = "l1"
    config.loss.roi_mode = "prediction"
    weights = losses.LossWeights.from_config(config.loss)
    assert (weights.w_adv, weights.w_con, weights.w_enc) == (1.0, 7.0, 1.0)
    assert (weights.enc_norm, weights.roi_mode, weights.focal_gamma) == ("l1", "prediction", 2.0)
    # The paper's defaults.
    assert losses.LossWeights.from_config(base_config().loss) == losses.LossWeights()
    assert (losses.LossWeights().w_adv, losses.LossWeights().w_con,
            losses.LossWeights().w_enc) == (1.0, 50.0, 1.0)


def test_bad_options_name_the_choices():
    x = tf.zeros((1, 4, 4, 1))
    with pytest.raises(ValueError, match=r"roi_mode='both' is not allowed; choose one of "
                                         r"\('target', 'prediction'\)"):
        losses.segmentation_loss(x, x, x, roi_mode="both")
    with pytest.raises(ValueError, match=r"norm='l3' is not allowed; choose one of "
                                         r"\('l2', 'l1'\)"):
        losses.encoder_loss(x, x, "l3")
