"""GRD-Net losses (paper eqs. 1-6, docs/method.md §3) as small functions returning
per-example values [B].

Per-example values let the caller reduce them for the global batch under a distribution
strategy (sum / global batch size). All computations are float32, also under mixed precision.

  contextual    L_con = wa * L1(X, X̂) + wb * (1 - SSIM(X, X̂))   (SSIM 11x11 Gaussian, σ 1.5)
  adversarial   L_adv = ||f_D(X) - f_D(X̂)||²  (feature matching; gradient reaches the generator)
  encoder       L_enc = ||z - ẑ||₂² (mean)  or mean |z - ẑ| with enc_norm="l1"
  generator     L_gan = w1 * L_adv + w2 * L_con + w3 * L_enc
  discriminator BCE on logits, real X -> 1, X̂ -> 0
  segmentator   focal loss (γ = 2) restricted by the ROI:
                roi_mode="target":     FL(A, M·ROI)       (default: the net learns the ROI)
                roi_mode="prediction": FL(A·ROI, M·ROI)   (eq. 5 as written)
"""
import dataclasses

import keras
import tensorflow as tf

from grdnet_tf import choices, config

# The defaults are the config's (grdnet_tf.config.base_config, where each key is documented).
_DEFAULTS = config.base_config().loss


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights and options of the GRD-Net losses (config section ``loss``).

    Args (defaults: ``config.base_config().loss``, the paper's values):
        w_adv, w_con, w_enc: w1, w2, w3 of L_gan.
        w_l1, w_ssim: wa, wb of the contextual loss.
        enc_norm: one of `choices.ENCODER_NORMS`, the norm of the encoder loss.
        w_focal: weight of the segmentator focal loss.
        focal_gamma: focusing parameter γ.
        focal_alpha: class-balancing α in [0, 1]; a negative value disables balancing.
        roi_mode: one of `choices.ROI_MODES`, see module docstring.
    """
    w_adv: float = _DEFAULTS.w_adv
    w_con: float = _DEFAULTS.w_con
    w_enc: float = _DEFAULTS.w_enc
    w_l1: float = _DEFAULTS.w_l1
    w_ssim: float = _DEFAULTS.w_ssim
    enc_norm: str = _DEFAULTS.enc_norm
    w_focal: float = _DEFAULTS.w_focal
    focal_gamma: float = _DEFAULTS.focal_gamma
    focal_alpha: float = _DEFAULTS.focal_alpha
    roi_mode: str = _DEFAULTS.roi_mode

    @classmethod
    def from_config(cls, loss_config):
        return cls(**{f.name: loss_config[f.name] for f in dataclasses.fields(cls)})


def _per_example_mean(x):
    return tf.reduce_mean(tf.reshape(x, [tf.shape(x)[0], -1]), axis=1)


def _f32(*tensors):
    return [tf.cast(t, tf.float32) for t in tensors]


def l1_loss(x, x_hat):
    x, x_hat = _f32(x, x_hat)
    return _per_example_mean(tf.abs(x - x_hat))


def ssim_loss(x, x_hat):
    """1 - SSIM per example; images in [0, 1]."""
    x, x_hat = _f32(x, x_hat)
    return 1.0 - tf.image.ssim(x, x_hat, max_val=1.0)


def contextual_loss(x, x_hat, w_l1=_DEFAULTS.w_l1, w_ssim=_DEFAULTS.w_ssim):
    return w_l1 * l1_loss(x, x_hat) + w_ssim * ssim_loss(x, x_hat)


def adversarial_loss(features_real, features_fake):
    """Feature matching: mean squared distance of discriminator features per example."""
    features_real, features_fake = _f32(features_real, features_fake)
    return _per_example_mean(tf.square(features_real - features_fake))


def encoder_loss(z, z_hat, norm=_DEFAULTS.enc_norm):
    choices.check("norm", norm, choices.ENCODER_NORMS)
    z, z_hat = _f32(z, z_hat)
    diff = z - z_hat
    return _per_example_mean(tf.square(diff) if norm == "l2" else tf.abs(diff))


def discriminator_loss(logit_real, logit_fake):
    """Binary cross-entropy on logits: real -> 1, fake -> 0, summed over the two terms."""
    logit_real, logit_fake = _f32(logit_real, logit_fake)
    real = tf.nn.sigmoid_cross_entropy_with_logits(tf.ones_like(logit_real), logit_real)
    fake = tf.nn.sigmoid_cross_entropy_with_logits(tf.zeros_like(logit_fake), logit_fake)
    return _per_example_mean(real) + _per_example_mean(fake)


def focal_loss(target, prediction, gamma=_DEFAULTS.focal_gamma,
               alpha=_DEFAULTS.focal_alpha):
    """Binary focal loss per example (mean over pixels) on probabilities [B, H, W, 1].

    Keras applies alpha only with apply_class_balancing=True (docs/tf-notes.md)."""
    target, prediction = _f32(target, prediction)
    per_pixel = keras.losses.binary_focal_crossentropy(
        target, prediction, apply_class_balancing=alpha >= 0,
        alpha=alpha if alpha >= 0 else 0.25, gamma=gamma)
    return _per_example_mean(per_pixel)


def segmentation_loss(anomaly_map, mask, roi, gamma=_DEFAULTS.focal_gamma,
                      alpha=_DEFAULTS.focal_alpha, roi_mode=_DEFAULTS.roi_mode):
    """Focal loss of the anomaly map A against the Perlin mask M restricted to the ROI."""
    choices.check("roi_mode", roi_mode, choices.ROI_MODES)
    anomaly_map, mask, roi = _f32(anomaly_map, mask, roi)
    target = mask * roi
    if roi_mode == "prediction":
        anomaly_map = anomaly_map * roi
    return focal_loss(target, anomaly_map, gamma=gamma, alpha=alpha)


def generator_losses(x, x_hat, z, z_hat, features_real, features_fake, weights):
    """Every component of L_gan, per example; key "generator" is the weighted total."""
    l1 = l1_loss(x, x_hat)
    ssim = ssim_loss(x, x_hat)
    contextual = weights.w_l1 * l1 + weights.w_ssim * ssim
    adversarial = adversarial_loss(features_real, features_fake)
    encoder = encoder_loss(z, z_hat, weights.enc_norm)
    total = weights.w_adv * adversarial + weights.w_con * contextual + weights.w_enc * encoder
    return {"generator": total, "adversarial": adversarial, "contextual": contextual,
            "l1": l1, "ssim": ssim, "encoder": encoder}
