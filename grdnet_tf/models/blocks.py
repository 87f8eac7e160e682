"""Building blocks shared by the three GRD-Net networks.

ResNet-V2 pre-activation residual blocks (He et al. 2016, "Identity Mappings in Deep
Residual Networks"): norm -> activation -> conv, twice, plus a shortcut that is the identity
when the shape is unchanged and a 1x1 projection of the pre-activated input otherwise.
"""
import keras
import tensorflow as tf
from keras import layers

from grdnet_tf import choices
from grdnet_tf.models.attention import make_attention


def check_divisible(height, width, levels, what):
    """Raises ValueError when a static (height, width) is not divisible by 2**levels."""
    factor = 2 ** levels
    for dim_name, dim in (("height", height), ("width", width)):
        if dim is not None and dim % factor:
            raise ValueError(f"{what}: input {dim_name}={dim} must be divisible by "
                             f"2**{levels}={factor} (image_size must be a multiple of {factor})")


def _group_count(channels):
    for groups in (32, 16, 8, 4, 2):
        if channels % groups == 0 and channels // groups >= 2:
            return groups
    return 1


@keras.saving.register_keras_serializable(package="grdnet_tf")
class FusedBatchNormalization(layers.BatchNormalization):
    """`keras.layers.BatchNormalization` computed by one fused TensorFlow kernel.

    Keras 3 builds batch norm from `tf.nn.moments` and `tf.nn.batch_normalization`: about
    ten elementwise ops and reductions forward and twice that backward, each one a pass
    over the activation (30% of the op time of a training step on CPU, docs/benchmarks.md).
    For 4-D float32 channels-last inputs this layer runs `FusedBatchNormV3` (oneDNN on CPU,
    cuDNN on GPU) and its fused gradient instead. Same formula, same epsilon, same variables
    and the same moving-average update (with the biased batch variance, as Keras), so
    checkpoints are interchangeable and outputs differ only by float32 rounding. Every other
    case (float16/bfloat16 inputs, masks, renorm, synchronized, other axes or ranks) runs
    the Keras implementation unchanged.

    Synchronised batch norm: when training runs under a tf.distribute strategy with more
    than one replica in sync and `cross_replica` is on (the default), the batch moments are
    those of the global batch, all-reduced over the replicas (`global_moments`), so every
    replica normalises and updates its moving statistics as one device would on the whole
    batch. With one replica (or `cross_replica=False`) nothing changes.

    Args: as `keras.layers.BatchNormalization`, and
        cross_replica: synchronise the training moments over the replicas when there are
            several (default True; no effect on one device).
    """

    def __init__(self, cross_replica=True, **kwargs):
        super().__init__(**kwargs)
        self.cross_replica = bool(cross_replica)

    def _synchronise(self, training):
        return bool(training and self.trainable and (self.cross_replica or self.synchronized)
                    and tf.distribute.get_strategy().num_replicas_in_sync > 1)

    def _fusable(self, inputs, mask):
        return (mask is None and not self.renorm and not self.synchronized
                and self.center and self.scale and len(inputs.shape) == 4
                and self.axis in (-1, 3) and inputs.dtype == tf.float32
                and self.compute_dtype == "float32" and keras.backend.backend() == "tensorflow")

    def _moments(self, inputs, mask):
        if mask is None and self._synchronise(True):
            return global_moments(inputs, self._reduction_axes)
        return super()._moments(inputs, mask)

    def call(self, inputs, training=None, mask=None):
        if self._synchronise(training) or not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        gamma = tf.convert_to_tensor(self.gamma)
        beta = tf.convert_to_tensor(self.beta)
        if training and self.trainable:
            empty = tf.zeros([0], tf.float32)
            outputs, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=inputs, scale=gamma, offset=beta, mean=empty, variance=empty,
                epsilon=self.epsilon, exponential_avg_factor=1.0, data_format="NHWC",
                is_training=True)
            # The kernel returns the Bessel-corrected variance; Keras averages the biased one.
            count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], tf.float32)
            variance = tf.where(count > 1.0, variance * ((count - 1.0) / count), 0.0)
            self.moving_mean.assign(
                self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(
                self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
            return outputs
        outputs, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=gamma, offset=beta,
            mean=tf.convert_to_tensor(self.moving_mean),
            variance=tf.convert_to_tensor(self.moving_variance), epsilon=self.epsilon,
            data_format="NHWC", is_training=False)
        return outputs


    def get_config(self):
        return {**super().get_config(), "cross_replica": self.cross_replica}


def global_moments(inputs, axes):
    """(mean, variance) over `axes` (all axes but the channel axis) of the inputs of all
    replicas in sync; call in a replica context.

    Two passes as `tf.nn.moments` on one device: the all-reduced sum and count give the
    global mean, then the all-reduced sum of squared deviations from it the (biased)
    variance, so there is no E[x^2] - E[x]^2 cancellation. Two all-reduces of one value per
    channel (the count rides with the sums).
    """
    context = tf.distribute.get_replica_context()
    inputs = tf.convert_to_tensor(inputs)
    rank = len(inputs.shape)
    (channel_axis,) = [a for a in range(rank) if a not in [x % rank for x in axes]]
    channels = inputs.shape[channel_axis]
    count = tf.cast(tf.size(inputs) // tf.shape(inputs)[channel_axis], inputs.dtype)
    local = tf.concat([tf.reduce_sum(inputs, axis=axes), count[None]], axis=0)
    total = context.all_reduce(tf.distribute.ReduceOp.SUM, local)
    global_count = total[channels]
    mean = total[:channels] / global_count
    broadcast = [channels if a == channel_axis else 1 for a in range(rank)]
    deviations = tf.reduce_sum(
        tf.math.squared_difference(inputs, tf.stop_gradient(tf.reshape(mean, broadcast))),
        axis=axes)
    variance = context.all_reduce(tf.distribute.ReduceOp.SUM, deviations) / global_count
    return mean, variance


def make_norm(kind, channels, name):
    """A normalisation layer of a kind in `choices.NORMS` (checked by the calling layer's
    constructor); 'none' gives an identity layer."""
    if kind == "batch":
        return FusedBatchNormalization(momentum=0.9, epsilon=1e-5, name=name)
    if kind == "group":
        return layers.GroupNormalization(groups=_group_count(channels), name=name)
    if kind == "instance":
        return layers.GroupNormalization(groups=-1, name=name)
    return layers.Identity(name=name)


def make_activation(kind, name):
    """An activation layer of a kind in `choices.ACTIVATIONS` (checked by the caller)."""
    if kind == "relu":
        return layers.ReLU(name=name)
    return layers.LeakyReLU(negative_slope=0.2, name=name)


@keras.saving.register_keras_serializable(package="grdnet_tf")
class PreActResidualBlock(layers.Layer):
    """Pre-activation residual block: (norm, act, conv3x3) x 2 + shortcut.

    Args:
        filters: output channels.
        resample: "none", "down" (first conv has stride 2) or "up" (nearest 2x upsampling
            of the pre-activated input before the first conv and the shortcut).
        norm: "batch", "group", "instance" or "none".
        activation: "relu" or "leaky_relu" (slope 0.2).
        attention: "none", "se" (Squeeze-and-Excitation) or "cbam", applied to the residual
            branch before the addition (SE-ResNet / CBAM-ResNet); "none" adds no layer.
        attention_reduction: reduction ratio of the attention MLP (default 16).
    """

    def __init__(self, filters, resample="none", norm="batch", activation="relu",
                 attention="none", attention_reduction=16, **kwargs):
        super().__init__(**kwargs)
        choices.check_positive_int("filters", filters)
        choices.check("resample", resample, choices.RESAMPLES)
        choices.check("norm", norm, choices.NORMS)
        choices.check("activation", activation, choices.ACTIVATIONS)
        choices.check("attention", attention, choices.ATTENTIONS)
        choices.check_positive_int("attention_reduction", attention_reduction)
        self.filters = filters
        self.resample = resample
        self.norm = norm
        self.activation = activation
        self.attention = attention
        self.attention_reduction = attention_reduction

    def build(self, input_shape):
        in_channels = input_shape[-1]
        stride = 2 if self.resample == "down" else 1
        use_bias = self.norm == "none"
        self.norm1 = make_norm(self.norm, in_channels, "norm1")
        self.act1 = make_activation(self.activation, "act1")
        self.conv1 = layers.Conv2D(self.filters, 3, strides=stride, padding="same",
                                   use_bias=use_bias, name="conv1")
        self.norm2 = make_norm(self.norm, self.filters, "norm2")
        self.act2 = make_activation(self.activation, "act2")
        self.conv2 = layers.Conv2D(self.filters, 3, padding="same", name="conv2")
        self.upsample = (layers.UpSampling2D(2, interpolation="nearest", name="upsample")
                         if self.resample == "up" else None)
        self.needs_projection = self.resample != "none" or in_channels != self.filters
        self.projection = (layers.Conv2D(self.filters, 1, strides=stride, name="projection")
                           if self.needs_projection else None)
        self.attention_layer = make_attention(self.attention, self.attention_reduction)

        shape = tuple(input_shape)
        self.norm1.build(shape)
        pre = shape
        if self.upsample is not None:
            pre = self.upsample.compute_output_shape(shape)
        self.conv1.build(pre)
        mid = self.conv1.compute_output_shape(pre)
        self.norm2.build(mid)
        self.conv2.build(mid)
        if self.attention_layer is not None:
            self.attention_layer.build(mid)
        if self.projection is not None:
            self.projection.build(pre)

    def call(self, x, training=None):
        h = self.act1(self.norm1(x, training=training))
        if self.upsample is not None:
            h = self.upsample(h)
            shortcut = self.projection(h)
        elif self.needs_projection:
            shortcut = self.projection(h)
        else:
            shortcut = x
        h = self.conv1(h)
        h = self.act2(self.norm2(h, training=training))
        h = self.conv2(h)
        if self.attention_layer is not None:
            h = self.attention_layer(h)
        return h + shortcut

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        if self.resample == "down":
            height = None if height is None else (height + 1) // 2
            width = None if width is None else (width + 1) // 2
        elif self.resample == "up":
            height = None if height is None else height * 2
            width = None if width is None else width * 2
        return (batch, height, width, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, resample=self.resample, norm=self.norm,
                      activation=self.activation, attention=self.attention,
                      attention_reduction=self.attention_reduction)
        return config


def stage_widths(base_width, stages, max_width):
    """Width of stage i = min(base_width * 2**i, max_width)."""
    return [min(base_width * 2 ** i, max_width) for i in range(stages)]
