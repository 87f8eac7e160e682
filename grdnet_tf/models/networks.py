"""The three GRD-Net networks as pure Keras models (no losses, no noise, no data).

Generator (GANomaly-style encoder-decoder-encoder, residual): X -> z -> X̂ -> ẑ.
Discriminator: residual encoder + global pooling + one logit; returns (features, logit).
Segmentator: U-Net on the channel concatenation of two images; one sigmoid map.

Reference: Ferrari, Fraccaroli, Lamma, "GRD-Net: Generative-Reconstructive-Discriminative
Anomaly Detection with Region of Interest Attention Module", 2023, §3; docs/method.md §2.
"""
import math

import keras
from keras import layers, ops

from grdnet_tf import choices
from grdnet_tf.models.blocks import (PreActResidualBlock, check_divisible, make_activation,
                                     make_norm, stage_widths)


def track_layer(owner, layer):
    """Holds `layer` as the attribute `owner.<layer.name>` and records its order.

    Layers in Python lists end up in a Keras `TrackedList`, which TensorFlow's object graph
    does not see: `tf.train.Checkpoint` would silently skip their variables (batch-norm
    statistics would never be saved; docs/tf-notes.md). Named attributes are seen by both
    Keras and TF.
    """
    setattr(owner, layer.name, layer)
    owner.block_names.append(layer.name)


def tracked_layers(owner):
    return [getattr(owner, name) for name in owner.block_names]


@keras.saving.register_keras_serializable(package="grdnet_tf")
class ResidualEncoder(layers.Layer):
    """Stem conv3x3, then `stages` stages that halve the resolution, then norm + act.

    Args:
        base_width: stem width; stage i has min(base_width * 2**i, max_width) channels.
        stages: number of stride-2 stages (input sides must be divisible by 2**stages).
        blocks_per_stage: residual blocks per stage (the first one downsamples).
        max_width: channel cap.
        norm, activation: see PreActResidualBlock.
        bottleneck: "conv" (1x1 conv to latent_channels, keeps the spatial grid),
            "dense" (flatten + Dense(latent_dim)) or "none" (return the feature map).
        latent_channels, latent_dim: size of the latent code.
        attention: "none", "se" or "cbam" in every residual block (see PreActResidualBlock).
        attention_reduction: reduction ratio of the attention MLPs.
    """

    def __init__(self, base_width=32, stages=5, blocks_per_stage=1, max_width=256,
                 norm="batch", activation="relu", bottleneck="conv", latent_channels=32,
                 latent_dim=2048, attention="none", attention_reduction=16, **kwargs):
        super().__init__(**kwargs)
        for name, value in (("base_width", base_width), ("stages", stages),
                            ("blocks_per_stage", blocks_per_stage), ("max_width", max_width),
                            ("latent_channels", latent_channels), ("latent_dim", latent_dim),
                            ("attention_reduction", attention_reduction)):
            choices.check_positive_int(name, value)
        choices.check("norm", norm, choices.NORMS)
        choices.check("activation", activation, choices.ACTIVATIONS)
        choices.check("bottleneck", bottleneck, choices.ENCODER_BOTTLENECKS)
        choices.check("attention", attention, choices.ATTENTIONS)
        self.base_width = base_width
        self.stages = stages
        self.blocks_per_stage = blocks_per_stage
        self.max_width = max_width
        self.norm = norm
        self.activation = activation
        self.bottleneck = bottleneck
        self.latent_channels = latent_channels
        self.latent_dim = latent_dim
        self.attention = attention
        self.attention_reduction = attention_reduction

        self.stem = layers.Conv2D(base_width, 3, padding="same", name="stem")
        self.block_names = []
        for i, width in enumerate(stage_widths(base_width, stages, max_width)):
            for j in range(blocks_per_stage):
                track_layer(self, PreActResidualBlock(
                    width, resample="down" if j == 0 else "none", norm=norm,
                    activation=activation, attention=attention,
                    attention_reduction=attention_reduction, name=f"stage{i}_block{j}"))
        last = stage_widths(base_width, stages, max_width)[-1]
        self.out_norm = make_norm(norm, last, "out_norm")
        self.out_act = make_activation(activation, "out_act")
        if bottleneck == "conv":
            self.head = layers.Conv2D(latent_channels, 1, name="latent")
        elif bottleneck == "dense":
            self.flatten = layers.Flatten(name="flatten")
            self.head = layers.Dense(latent_dim, name="latent")
        else:
            self.head = None

    def call(self, x, training=None):
        check_divisible(x.shape[1], x.shape[2], self.stages, self.name)
        h = self.stem(x)
        for block in tracked_layers(self):
            h = block(h, training=training)
        h = self.out_act(self.out_norm(h, training=training))
        if self.bottleneck == "dense":
            return self.head(self.flatten(h))
        if self.head is not None:
            return self.head(h)
        return h

    def get_config(self):
        config = super().get_config()
        config.update(base_width=self.base_width, stages=self.stages,
                      blocks_per_stage=self.blocks_per_stage, max_width=self.max_width,
                      norm=self.norm, activation=self.activation, bottleneck=self.bottleneck,
                      latent_channels=self.latent_channels, latent_dim=self.latent_dim,
                      attention=self.attention, attention_reduction=self.attention_reduction)
        return config


@keras.saving.register_keras_serializable(package="grdnet_tf")
class ResidualDecoder(layers.Layer):
    """Mirror of ResidualEncoder: latent -> image in [0, 1] (sigmoid, float32).

    Args:
        channels: output channels (1 or 3).
        bottom_size: (height, width) of the latent grid; required for the dense bottleneck.
        Others: as ResidualEncoder.
    """

    def __init__(self, channels=3, base_width=32, stages=5, blocks_per_stage=1, max_width=256,
                 norm="batch", bottleneck="conv", bottom_size=None, attention="none",
                 attention_reduction=16, **kwargs):
        super().__init__(**kwargs)
        choices.check("channels", channels, choices.CHANNELS)
        choices.check("bottleneck", bottleneck, choices.BOTTLENECKS)
        choices.check("attention", attention, choices.ATTENTIONS)
        choices.check_positive_int("attention_reduction", attention_reduction)
        if bottleneck == "dense" and bottom_size is None:
            raise ValueError("bottom_size (the latent grid (height, width)) is required for "
                             "bottleneck='dense'")
        self.channels = channels
        self.base_width = base_width
        self.stages = stages
        self.blocks_per_stage = blocks_per_stage
        self.max_width = max_width
        self.norm = norm
        self.bottleneck = bottleneck
        self.bottom_size = None if bottom_size is None else tuple(bottom_size)
        self.attention = attention
        self.attention_reduction = attention_reduction

        widths = stage_widths(base_width, stages, max_width)
        if bottleneck == "dense":
            bh, bw = self.bottom_size
            self.project = layers.Dense(bh * bw * widths[-1], name="project")
            self.reshape = layers.Reshape((bh, bw, widths[-1]), name="reshape")
        else:
            self.project = layers.Conv2D(widths[-1], 3, padding="same", name="project")
        self.block_names = []
        for i in reversed(range(stages)):
            width = widths[i - 1] if i > 0 else base_width
            for j in range(blocks_per_stage):
                track_layer(self, PreActResidualBlock(
                    width, resample="up" if j == 0 else "none", norm=norm,
                    attention=attention, attention_reduction=attention_reduction,
                    name=f"stage{i}_block{j}"))
        self.out_norm = make_norm(norm, base_width, "out_norm")
        self.out_act = make_activation("relu", "out_act")
        self.out_conv = layers.Conv2D(channels, 3, padding="same", name="out_conv")
        self.out_sigmoid = layers.Activation("sigmoid", dtype="float32", name="out_sigmoid")

    def call(self, z, training=None):
        h = self.project(z)
        if self.bottleneck == "dense":
            h = self.reshape(h)
        for block in tracked_layers(self):
            h = block(h, training=training)
        h = self.out_conv(self.out_act(self.out_norm(h, training=training)))
        return self.out_sigmoid(h)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, base_width=self.base_width, stages=self.stages,
                      blocks_per_stage=self.blocks_per_stage, max_width=self.max_width,
                      norm=self.norm, bottleneck=self.bottleneck, bottom_size=self.bottom_size,
                      attention=self.attention, attention_reduction=self.attention_reduction)
        return config


@keras.saving.register_keras_serializable(package="grdnet_tf")
class Generator(keras.Model):
    """GRD-Net generator: encoder E1 -> z, decoder -> X̂, second encoder E2 (own weights) -> ẑ.

    Args:
        channels: image channels, 1 or 3.
        base_width, stages, blocks_per_stage, max_width: encoder/decoder widths; stage i has
            min(base_width * 2**i, max_width) channels (paper: 32, 5 stages, 256 cap).
        bottleneck: "conv" (fully convolutional latent, latent_channels x H/2**stages x
            W/2**stages; paper's preferred 32x8x8 at 256 px) or "dense" (latent_dim vector,
            2048 in the paper; needs image_size).
        latent_channels, latent_dim: latent size for the two bottleneck kinds.
        norm: "batch", "group", "instance" or "none".
        image_size: (height, width), required only for the dense bottleneck.
        attention: "none", "se" or "cbam" in every residual block of E1, the decoder and E2.
        attention_reduction: reduction ratio of the attention MLPs (default 16).

    Call: images float [B, H, W, channels] in [0, 1] -> (X̂ [B, H, W, channels] float32 in
    [0, 1], z float32, ẑ float32). `reconstruct` runs E1 and the decoder only (inference).
    """

    def __init__(self, channels=3, base_width=32, stages=5, blocks_per_stage=1, max_width=256,
                 bottleneck="conv", latent_channels=32, latent_dim=2048, norm="batch",
                 image_size=None, attention="none", attention_reduction=16, **kwargs):
        super().__init__(**kwargs)
        choices.check("channels", channels, choices.CHANNELS)
        choices.check("bottleneck", bottleneck, choices.BOTTLENECKS)
        choices.check("norm", norm, choices.NORMS)
        choices.check("attention", attention, choices.ATTENTIONS)
        choices.check_positive_int("attention_reduction", attention_reduction)
        bottom_size = None
        if bottleneck == "dense":
            if image_size is None:
                raise ValueError("image_size=(height, width) is required for bottleneck='dense'")
            check_divisible(image_size[0], image_size[1], stages, "Generator image_size")
            bottom_size = (image_size[0] // 2 ** stages, image_size[1] // 2 ** stages)
        self.channels = channels
        self.base_width = base_width
        self.stages = stages
        self.blocks_per_stage = blocks_per_stage
        self.max_width = max_width
        self.bottleneck = bottleneck
        self.latent_channels = latent_channels
        self.latent_dim = latent_dim
        self.norm = norm
        self.image_size = None if image_size is None else tuple(image_size)
        self.attention = attention
        self.attention_reduction = attention_reduction

        attention_args = dict(attention=attention, attention_reduction=attention_reduction)
        encoder_args = dict(base_width=base_width, stages=stages,
                            blocks_per_stage=blocks_per_stage, max_width=max_width, norm=norm,
                            bottleneck=bottleneck, latent_channels=latent_channels,
                            latent_dim=latent_dim, **attention_args)
        self.encoder = ResidualEncoder(name="encoder", **encoder_args)
        self.decoder = ResidualDecoder(channels=channels, base_width=base_width, stages=stages,
                                       blocks_per_stage=blocks_per_stage, max_width=max_width,
                                       norm=norm, bottleneck=bottleneck,
                                       bottom_size=bottom_size, name="decoder",
                                       **attention_args)
        self.second_encoder = ResidualEncoder(name="second_encoder", **encoder_args)

    def _check_input(self, x):
        if x.shape[-1] is not None and x.shape[-1] != self.channels:
            raise ValueError(f"Generator expects {self.channels} input channels, got "
                             f"{x.shape[-1]} (shape {tuple(x.shape)})")
        if self.image_size is not None and tuple(x.shape[1:3]) != self.image_size:
            raise ValueError(f"Generator with bottleneck='dense' was built for image_size="
                             f"{self.image_size}, got input of shape {tuple(x.shape)}")

    def reconstruct(self, x, training=False):
        """X -> (X̂, z): the inference path (no second encoder)."""
        self._check_input(x)
        z = self.encoder(x, training=training)
        return self.decoder(z, training=training), ops.cast(z, "float32")

    def call(self, x, training=None):
        self._check_input(x)
        z = self.encoder(x, training=training)
        x_hat = self.decoder(z, training=training)
        z_hat = self.second_encoder(x_hat, training=training)
        return x_hat, ops.cast(z, "float32"), ops.cast(z_hat, "float32")

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, base_width=self.base_width, stages=self.stages,
                      blocks_per_stage=self.blocks_per_stage, max_width=self.max_width,
                      bottleneck=self.bottleneck, latent_channels=self.latent_channels,
                      latent_dim=self.latent_dim, norm=self.norm, image_size=self.image_size,
                      attention=self.attention, attention_reduction=self.attention_reduction)
        return config


@keras.saving.register_keras_serializable(package="grdnet_tf")
class Discriminator(keras.Model):
    """GRD-Net discriminator: residual encoder (leaky ReLU), global average pooling, one logit.

    Fully convolutional up to the pooling, so it accepts any input size the generator does.

    Args:
        channels: image channels, 1 or 3.
        base_width, stages, blocks_per_stage, max_width, norm: as the generator's encoder.
        attention: "none", "se" or "cbam" in every residual block of the encoder.
        attention_reduction: reduction ratio of the attention MLPs (default 16).

    Call: images [B, H, W, channels] -> (features float32 [B, H/2**stages, W/2**stages, C]
    used for feature matching, logit float32 [B, 1]).
    """

    def __init__(self, channels=3, base_width=32, stages=5, blocks_per_stage=1, max_width=256,
                 norm="batch", attention="none", attention_reduction=16, **kwargs):
        super().__init__(**kwargs)
        # norm, attention and the widths are checked by the ResidualEncoder built below.
        choices.check("channels", channels, choices.CHANNELS)
        self.channels = channels
        self.base_width = base_width
        self.stages = stages
        self.blocks_per_stage = blocks_per_stage
        self.max_width = max_width
        self.norm = norm
        self.attention = attention
        self.attention_reduction = attention_reduction
        self.encoder = ResidualEncoder(base_width=base_width, stages=stages,
                                       blocks_per_stage=blocks_per_stage, max_width=max_width,
                                       norm=norm, activation="leaky_relu", bottleneck="none",
                                       attention=attention,
                                       attention_reduction=attention_reduction, name="encoder")
        self.pool = layers.GlobalAveragePooling2D(name="pool")
        self.classifier = layers.Dense(1, dtype="float32", name="logit")

    def call(self, x, training=None):
        if x.shape[-1] is not None and x.shape[-1] != self.channels:
            raise ValueError(f"Discriminator expects {self.channels} input channels, got "
                             f"{x.shape[-1]}")
        features = self.encoder(x, training=training)
        logit = self.classifier(self.pool(features))
        return ops.cast(features, "float32"), logit

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, base_width=self.base_width, stages=self.stages,
                      blocks_per_stage=self.blocks_per_stage, max_width=self.max_width,
                      norm=self.norm, attention=self.attention,
                      attention_reduction=self.attention_reduction)
        return config


@keras.saving.register_keras_serializable(package="grdnet_tf")
class Segmentator(keras.Model):
    """GRD-Net discriminative U-Net: concat(image, reconstruction) -> anomaly map A.

    Encoder levels of min(base_width * 2**i, max_width) channels, i = 0..depth, each a
    pre-activation residual block (stride 2 between levels); the decoder upsamples, concatenates
    the skip connection and applies a residual block; a 1x1 conv and a float32 sigmoid give one
    map at input resolution.

    Args:
        channels: channels of EACH of the two images (1 or 3); the input has 2*channels.
        base_width: width at full resolution (paper-size default 32).
        depth: number of downsamplings (input sides divisible by 2**depth).
        max_width: channel cap.
        norm: "batch", "group", "instance" or "none".
        attention: "none", "se" or "cbam" in the ENCODER blocks (enc0..enc<depth>) only; the
            decoder blocks stay plain.
        attention_reduction: reduction ratio of the attention MLPs (default 16).
        output_prior: the map's value on every pixel at initialisation, pi in (0, 1): the
            output conv's bias starts at log(pi / (1 - pi)) (Lin et al. 2017, "Focal Loss
            for Dense Object Detection", section 4.1). 0.5 = zero bias, Keras' default.

    Call: x [B, H, W, 2*channels] -> A float32 [B, H, W, 1] in [0, 1].
    """

    def __init__(self, channels=3, base_width=32, depth=4, max_width=512, norm="batch",
                 attention="none", attention_reduction=16, output_prior=0.5, **kwargs):
        super().__init__(**kwargs)
        choices.check("channels", channels, choices.CHANNELS)
        choices.check_positive_int("base_width", base_width)
        choices.check_positive_int("depth", depth)
        choices.check("norm", norm, choices.NORMS)
        choices.check("attention", attention, choices.ATTENTIONS)
        choices.check_positive_int("attention_reduction", attention_reduction)
        choices.check_open_unit_interval("Segmentator output_prior", output_prior)
        self.channels = channels
        self.base_width = base_width
        self.depth = depth
        self.output_prior = float(output_prior)
        self.max_width = max_width
        self.norm = norm
        self.attention = attention
        self.attention_reduction = attention_reduction
        widths = [min(base_width * 2 ** i, max_width) for i in range(depth + 1)]
        attention_args = dict(attention=attention, attention_reduction=attention_reduction)
        self.stem = layers.Conv2D(base_width, 3, padding="same", name="stem")
        self.block_names = []
        track_layer(self, PreActResidualBlock(widths[0], norm=norm, name="enc0",
                                              **attention_args))
        for i in range(1, depth + 1):
            track_layer(self, PreActResidualBlock(widths[i], resample="down", norm=norm,
                                                  name=f"enc{i}", **attention_args))
        self.upsample = layers.UpSampling2D(2, interpolation="nearest", name="upsample")
        self.concat = layers.Concatenate(axis=-1, name="concat")
        for i in reversed(range(depth)):
            track_layer(self, PreActResidualBlock(widths[i], norm=norm, name=f"dec{i}"))
        self.out_norm = make_norm(norm, widths[0], "out_norm")
        self.out_act = make_activation("relu", "out_act")
        self.out_conv = layers.Conv2D(1, 1, name="out_conv", bias_initializer=(
            keras.initializers.Constant(math.log(self.output_prior / (1 - self.output_prior)))))
        self.out_sigmoid = layers.Activation("sigmoid", dtype="float32", name="out_sigmoid")

    def call(self, x, training=None):
        if x.shape[-1] is not None and x.shape[-1] != 2 * self.channels:
            raise ValueError(f"Segmentator expects the concatenation of two {self.channels}-"
                             f"channel images ({2 * self.channels} channels), got {x.shape[-1]}")
        check_divisible(x.shape[1], x.shape[2], self.depth, self.name)
        h = self.stem(x)
        blocks = tracked_layers(self)
        down, up = blocks[:self.depth + 1], blocks[self.depth + 1:]
        skips = []
        for block in down:
            h = block(h, training=training)
            skips.append(h)
        for block, skip in zip(up, reversed(skips[:-1])):
            h = block(self.concat([self.upsample(h), skip]), training=training)
        h = self.out_conv(self.out_act(self.out_norm(h, training=training)))
        return self.out_sigmoid(h)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, base_width=self.base_width, depth=self.depth,
                      max_width=self.max_width, norm=self.norm, attention=self.attention,
                      attention_reduction=self.attention_reduction,
                      output_prior=self.output_prior)
        return config


def build_networks(config):
    """The three networks of a config (``model`` and ``data`` sections), unbuilt."""
    m = config.model
    channels = config.data.channels
    attention_args = dict(attention=m.attention, attention_reduction=m.attention_reduction)
    generator = Generator(channels=channels, base_width=m.base_width, stages=m.stages,
                          blocks_per_stage=m.blocks_per_stage, max_width=m.max_width,
                          bottleneck=m.bottleneck, latent_channels=m.latent_channels,
                          latent_dim=m.latent_dim, norm=m.norm,
                          image_size=tuple(config.data.image_size)
                          if m.bottleneck == "dense" else None, name="generator",
                          **attention_args)
    discriminator = Discriminator(channels=channels, base_width=m.disc_base_width,
                                  stages=m.disc_stages, blocks_per_stage=m.blocks_per_stage,
                                  max_width=m.max_width, norm=m.norm, name="discriminator",
                                  **attention_args)
    segmentator = Segmentator(channels=channels, base_width=m.seg_base_width,
                              depth=m.seg_depth, max_width=2 * m.max_width, norm=m.norm,
                              output_prior=m.seg_output_prior, name="segmentator",
                              **attention_args)
    return generator, discriminator, segmentator
