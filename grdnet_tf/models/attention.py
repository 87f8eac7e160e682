"""Channel and spatial attention for the residual blocks (AttentDifferNet-style ablation).

Squeeze-and-Excitation (Hu et al. 2018, "Squeeze-and-Excitation Networks"):
    s = sigmoid(W2 relu(W1 GAP(F))),  F' = s * F.
CBAM (Woo et al. 2018, "CBAM: Convolutional Block Attention Module"):
    Mc = sigmoid(MLP(AvgPool(F)) + MLP(MaxPool(F)))   (one MLP shared by both descriptors)
    F' = Mc * F
    Ms = sigmoid(conv_kxk([mean_c(F'); max_c(F')]))
    F'' = Ms * F'.
Vieira e Silva et al. 2024 ("Attention Modules Improve Image-Level Anomaly Detection for
Industrial Inspection: A DifferNet Case Study", WACV) report both improve image AUROC.

Hidden width of the MLPs: ``min(channels, max(channels // reduction, min_hidden))`` -- the
paper ratio r (16), floored at ``min_hidden`` (8), never wider than ``channels``. The floor
matters: the pooled descriptor of a block hardly depends on the sample at initialisation, so
a ReLU hidden layer of k units (zero bias) is entirely dead with odds ~2**-k; with a floor of
4 the paper-size networks had about one fully dead SE MLP (of 25) per initialisation, with 8
the odds are ~1/256 per layer.

Mixed precision: pooling, the MLPs, the spatial conv and the sigmoids run in the layer's
variable dtype (float32 under ``mixed_float16``); the gated output is in the compute dtype.
"""
import keras
from keras import layers, ops

from grdnet_tf import choices


def hidden_width(channels, reduction, min_hidden):
    """Width of the attention MLP's hidden layer (see the module docstring)."""
    return min(channels, max(channels // reduction, min_hidden))


class _ChannelGate(layers.Layer):
    """Shared base: the reduce/expand MLP of SE and CBAM, built in float32-safe dtype."""

    def __init__(self, reduction=16, min_hidden=8, **kwargs):
        super().__init__(**kwargs)
        choices.check_positive_int("reduction", reduction)
        choices.check_positive_int("min_hidden", min_hidden)
        self.reduction = reduction
        self.min_hidden = min_hidden

    @property
    def gate_dtype(self):
        return self.dtype_policy.variable_dtype

    def _build_mlp(self, channels):
        hidden = hidden_width(channels, self.reduction, self.min_hidden)
        self.reduce = layers.Dense(hidden, activation="relu", dtype=self.gate_dtype,
                                   name="reduce")
        self.expand = layers.Dense(channels, dtype=self.gate_dtype, name="expand")
        self.reduce.build((None, channels))
        self.expand.build((None, hidden))

    def _mlp(self, descriptor):
        return self.expand(self.reduce(descriptor))

    def get_config(self):
        config = super().get_config()
        config.update(reduction=self.reduction, min_hidden=self.min_hidden)
        return config


@keras.saving.register_keras_serializable(package="grdnet_tf")
class SqueezeExcitation(_ChannelGate):
    """Squeeze-and-Excitation channel gate (Hu et al. 2018).

    Args:
        reduction: ratio r of the bottleneck MLP (paper: 16).
        min_hidden: floor of the hidden width (default 8); see ``hidden_width``.

    Call: x [B, H, W, C] -> x * s, same shape and compute dtype. With
    ``return_attention=True`` returns ``(y, {"channel": s})``, s float32 [B, 1, 1, C] in [0, 1].
    """

    def build(self, input_shape):
        self._build_mlp(input_shape[-1])

    def call(self, x, return_attention=False):
        pooled = ops.mean(ops.cast(x, self.gate_dtype), axis=(1, 2))
        gate = ops.sigmoid(self._mlp(pooled))[:, None, None, :]
        y = x * ops.cast(gate, x.dtype)
        return (y, {"channel": gate}) if return_attention else y


@keras.saving.register_keras_serializable(package="grdnet_tf")
class CBAM(_ChannelGate):
    """Convolutional Block Attention Module: channel gate, then spatial gate (Woo et al. 2018).

    Args:
        reduction: ratio r of the shared channel MLP (paper: 16).
        spatial_kernel: side of the spatial-attention conv (paper: 7), "same" padding.
        min_hidden: floor of the hidden width (default 8); see ``hidden_width``.

    Call: x [B, H, W, C] -> Ms * (Mc * x), same shape and compute dtype. With
    ``return_attention=True`` returns ``(y, {"channel": Mc, "spatial": Ms})``, float32 in
    [0, 1] of shapes [B, 1, 1, C] and [B, H, W, 1].
    """

    def __init__(self, reduction=16, spatial_kernel=7, min_hidden=8, **kwargs):
        super().__init__(reduction=reduction, min_hidden=min_hidden, **kwargs)
        choices.check_positive_int("spatial_kernel", spatial_kernel)
        self.spatial_kernel = spatial_kernel

    def build(self, input_shape):
        self._build_mlp(input_shape[-1])
        self.spatial_conv = layers.Conv2D(1, self.spatial_kernel, padding="same",
                                          dtype=self.gate_dtype, name="spatial_conv")
        self.spatial_conv.build(tuple(input_shape[:-1]) + (2,))

    def call(self, x, return_attention=False):
        xf = ops.cast(x, self.gate_dtype)
        pooled = ops.stack([ops.mean(xf, axis=(1, 2)), ops.max(xf, axis=(1, 2))], axis=1)
        channel = ops.sigmoid(ops.sum(self._mlp(pooled), axis=1))[:, None, None, :]
        y = x * ops.cast(channel, x.dtype)
        yf = xf * channel
        descriptors = ops.concatenate([ops.mean(yf, axis=-1, keepdims=True),
                                       ops.max(yf, axis=-1, keepdims=True)], axis=-1)
        spatial = ops.sigmoid(self.spatial_conv(descriptors))
        y = y * ops.cast(spatial, x.dtype)
        return (y, {"channel": channel, "spatial": spatial}) if return_attention else y

    def get_config(self):
        config = super().get_config()
        config.update(spatial_kernel=self.spatial_kernel)
        return config


def make_attention(kind, reduction=16, name="attention"):
    """The attention layer of a kind in `choices.ATTENTIONS` (checked, like `reduction`, by
    the calling block's constructor); None for "none"."""
    if kind == "se":
        return SqueezeExcitation(reduction=reduction, name=name)
    if kind == "cbam":
        return CBAM(reduction=reduction, name=name)
    return None
