"""GRDNet: the one Keras model that owns GRD-Net training and inference.

It holds the generator, discriminator and segmentator, three optimizers (one per network)
and the loss weights. `train_step` does, per batch (docs/method.md §3):

  1. one generator forward X_n -> (X̂, z, ẑ) and discriminator forwards on X and X̂ under a
     persistent tape;
  2. discriminator update from BCE(real X -> 1, X̂ -> 0), over discriminator weights only;
  3. generator update from L_gan = w1 L_adv + w2 L_con + w3 L_enc, over generator weights
     only (the feature-matching term sends gradient through X̂ to the generator);
  4. segmentator update from the ROI-restricted focal loss on concat(X_n, stop_grad(X̂)).

Steps 2 and 3 share the forward pass of step 1 (the generator is not run twice); both
gradients are taken before either update is applied.

Losses are reduced over the GLOBAL batch (sum / (per-replica batch x replicas)), so that the
summed cross-replica gradients equal single-device gradients. Reported metrics are replica
means (the true loss values).

Inference (`call`): X -> {reconstruction: X̂, raw_anomaly_map: A [B, H, W]}; smoothing and
the image score live in `grdnet_tf.scoring`. `build_grdnet(config)` builds it from a config.
"""
import dataclasses

import keras
import tensorflow as tf

from grdnet_tf import choices, keys, losses
from grdnet_tf.models.blocks import FusedBatchNormalization
from grdnet_tf.models.networks import build_networks

LOSS_METRICS = ("total_loss", "generator_loss", "adversarial_loss", "contextual_loss",
                "l1_loss", "ssim_loss", "encoder_loss", "discriminator_loss",
                "segmentator_loss")
NORM_METRICS = ("generator_grad_norm", "discriminator_grad_norm", "segmentator_grad_norm")


@keras.saving.register_keras_serializable(package="grdnet_tf")
class GRDNet(keras.Model):
    """Generator + discriminator + segmentator with a custom `train_step`.

    Args:
        generator, discriminator, segmentator: the networks (grdnet_tf.models.networks).
        loss_weights: dict of `losses.LossWeights` fields (config section ``loss``).
    """

    def __init__(self, generator, discriminator, segmentator, loss_weights=None, **kwargs):
        super().__init__(**kwargs)
        self.generator = generator
        self.discriminator = discriminator
        self.segmentator = segmentator
        self.loss_weights = dict(loss_weights or {})
        self.weights_ = losses.LossWeights(**self.loss_weights)
        self.trackers = {name: keras.metrics.Mean(name=name)
                         for name in LOSS_METRICS + NORM_METRICS}
        self.g_optimizer = self.d_optimizer = self.s_optimizer = None

    def build_from_shape(self, image_shape):
        """Creates every variable from an image shape (H, W, C); call inside the strategy scope."""
        h, w, c = image_shape
        images = tf.zeros((1, h, w, c))
        self.generator(images)
        self.discriminator(images)
        self.segmentator(tf.zeros((1, h, w, 2 * c)))
        self.call(images)

    def compile(self, g_optimizer, d_optimizer, s_optimizer, **kwargs):
        """One optimizer per network, built eagerly (required under a strategy)."""
        self.g_optimizer, self.d_optimizer, self.s_optimizer = (g_optimizer, d_optimizer,
                                                                s_optimizer)
        super().compile(optimizer=g_optimizer, **kwargs)
        for optimizer, net in self._pairs():
            optimizer.build(net.trainable_variables)
            if tf.distribute.get_strategy().num_replicas_in_sync > 1:
                _take_summed_gradients(optimizer)

    def _pairs(self):
        return ((self.g_optimizer, self.generator), (self.d_optimizer, self.discriminator),
                (self.s_optimizer, self.segmentator))

    @property
    def optimizers(self):
        return {"generator": self.g_optimizer, "discriminator": self.d_optimizer,
                "segmentator": self.s_optimizer}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def call(self, images, training=False):
        reconstruction, _ = self.generator.reconstruct(images, training=training)
        segmentator_input = tf.concat([tf.cast(images, reconstruction.dtype), reconstruction],
                                      axis=-1)
        anomaly_map = self.segmentator(segmentator_input, training=training)
        return {keys.RECONSTRUCTION: reconstruction, keys.RAW_ANOMALY_MAP: anomaly_map[..., 0]}

    def compute_losses(self, data, training):
        """Forward pass and every loss; returns (scalar losses for the global batch, forward).

        Scalars are sums over this replica's examples divided by the global batch size.
        """
        x, x_n = data[keys.IMAGE], data[keys.PERTURBED]
        w = self.weights_
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        global_batch = tf.cast(tf.shape(x)[0] * replicas, tf.float32)

        def reduce(per_example):
            return tf.reduce_sum(per_example) / global_batch

        x_hat, z, z_hat = self.generator(x_n, training=training)
        features_real, logit_real = self.discriminator(x, training=training)
        features_fake, logit_fake = self.discriminator(x_hat, training=training)
        components = losses.generator_losses(x, x_hat, z, z_hat, features_real,
                                             features_fake, w)
        scalars = {f"{name}_loss": reduce(value) for name, value in components.items()}
        scalars["discriminator_loss"] = reduce(
            losses.discriminator_loss(logit_real, logit_fake))
        return scalars, x_hat

    def segmentator_loss(self, data, x_hat, training):
        w = self.weights_
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        global_batch = tf.cast(tf.shape(x_hat)[0] * replicas, tf.float32)
        x_n = tf.cast(data[keys.PERTURBED], x_hat.dtype)
        anomaly_map = self.segmentator(tf.concat([x_n, tf.stop_gradient(x_hat)], axis=-1),
                                       training=training)
        focal = losses.segmentation_loss(anomaly_map, data[keys.MASK], data[keys.ROI],
                                         gamma=w.focal_gamma, alpha=w.focal_alpha,
                                         roi_mode=w.roi_mode)
        return w.w_focal * tf.reduce_sum(focal) / global_batch

    def compute_gradients(self, data):
        """Forward pass, losses and the three networks' gradients on this replica's batch;
        returns (scalars, (discriminator, generator, segmentator) gradients). Nothing is
        updated but batch-norm moving statistics, and nothing crosses replicas but the
        synchronised batch-norm moments."""
        with tf.GradientTape(persistent=True) as tape:
            scalars, x_hat = self.compute_losses(data, training=True)
            scaled_g = _scale(self.g_optimizer, scalars["generator_loss"])
            scaled_d = _scale(self.d_optimizer, scalars["discriminator_loss"])
        d_grads = tape.gradient(scaled_d, self.discriminator.trainable_variables)
        g_grads = tape.gradient(scaled_g, self.generator.trainable_variables)
        del tape
        with tf.GradientTape() as seg_tape:
            scalars["segmentator_loss"] = self.segmentator_loss(data, x_hat, training=True)
            scaled_s = _scale(self.s_optimizer, scalars["segmentator_loss"])
        s_grads = seg_tape.gradient(scaled_s, self.segmentator.trainable_variables)
        return scalars, (d_grads, g_grads, s_grads)

    def apply_updates(self, scalars, gradients):
        """Sums `compute_gradients`' gradients over the replicas, applies the three updates
        (all skipped together on a loss-scaling overflow) and updates the trackers; returns
        the step logs."""
        d_grads, g_grads, s_grads = gradients
        updates = [(name, optimizer, net, _sum_over_replicas(grads))
                   for name, optimizer, net, grads in (
                       ("discriminator", self.d_optimizer, self.discriminator, d_grads),
                       ("generator", self.g_optimizer, self.generator, g_grads),
                       ("segmentator", self.s_optimizer, self.segmentator, s_grads))]
        updates = _overflow_skips_every_update(updates)
        norms = {}
        for name, optimizer, net, grads in updates:
            norms[f"{name}_grad_norm"] = _unscaled_norm(optimizer, grads)  # before the update
            optimizer.apply_gradients(zip(grads, net.trainable_variables))
        return self._update_trackers(scalars, norms)

    def train_step(self, data):
        return self.apply_updates(*self.compute_gradients(data))

    def replica_train_step(self, jit_compile=False):
        """The training step to run in `strategy.run` (or alone on one device).

        With `jit_compile` on one replica the whole `train_step` is one XLA program. Under
        several replicas the all-reduce of the gradients and the optimizers' updates
        (`merge_call`s) cannot sit inside an XLA function on CPU devices, so XLA compiles
        `compute_gradients` (the forward and backward passes, nearly all of the step's
        FLOPs) and the all-reduce and updates run around it as plain graph ops. A
        synchronised batch norm all-reduces inside the forward pass: TensorFlow compiles that
        into XLA only when every replica is a GPU, and refuses it otherwise (see
        `train_lib.check_jit_compile`). Call inside the strategy scope.
        """
        if not jit_compile:
            return self.train_step
        if tf.distribute.get_strategy().num_replicas_in_sync == 1:
            return tf.function(self.train_step, jit_compile=True)
        gradients = tf.function(self.compute_gradients, jit_compile=True)

        def step(data):
            return self.apply_updates(*gradients(data))
        return step

    def test_step(self, data):
        scalars, x_hat = self.compute_losses(data, training=False)
        scalars["segmentator_loss"] = self.segmentator_loss(data, x_hat, training=False)
        return self._update_trackers(scalars, {})

    def _update_trackers(self, scalars, norms):
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        scalars["total_loss"] = scalars["generator_loss"] + scalars["segmentator_loss"]
        for name, value in scalars.items():
            # value is this replica's share of the global mean; x replicas = replica mean.
            self.trackers[name].update_state(value * replicas)
        for name, (value, weight) in norms.items():
            self.trackers[name].update_state(value, sample_weight=weight)
        return {name: tracker.result() for name, tracker in self.trackers.items()
                if name in scalars or name in norms}

    def get_config(self):
        config = super().get_config()
        config.update(
            generator=keras.saving.serialize_keras_object(self.generator),
            discriminator=keras.saving.serialize_keras_object(self.discriminator),
            segmentator=keras.saving.serialize_keras_object(self.segmentator),
            loss_weights=self.loss_weights)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for name in ("generator", "discriminator", "segmentator"):
            config[name] = keras.saving.deserialize_keras_object(config[name])
        return cls(**config)


def _sum_over_replicas(grads):
    """The gradients summed over the replicas in sync (one all-reduce, the one the optimizer
    would do); unchanged with one replica. The logged norm is then that of the update."""
    if tf.distribute.get_strategy().num_replicas_in_sync == 1:
        return grads
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM,
                                                          list(grads))


def _take_summed_gradients(optimizer):
    """Makes `optimizer` (or a LossScaleOptimizer's inner one) take gradients that are
    already summed over the replicas; call when it is built under several replicas.

    A Keras 3 optimizer all-reduces (sums) the gradients it gets in a replica context
    (`_all_reduce_sum_gradients` of the TensorFlow backend's optimizer, keras==3.15).
    GRDNet.train_step does that sum itself (`_sum_over_replicas`: the same single
    all-reduce, whose result also gives the logged norm), so the optimizer's is skipped.
    The optimizers of a GRDNet are applied by its train_step only. It is an instance
    attribute for good (not swapped per step): MirroredStrategy runs each replica, and a
    LossScaleOptimizer its inner updates, in threads of their own.
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if not hasattr(inner, "_all_reduce_sum_gradients"):
        raise TypeError(f"optimizer {inner.name}: this Keras version has no "
                        "_all_reduce_sum_gradients (grdnet_tf needs keras==3.15)")
    vars(inner)["_all_reduce_sum_gradients"] = list


def _overflow_skips_every_update(updates):
    """Under loss scaling, one network's overflow skips the step of all three.

    Each LossScaleOptimizer skips its update (and lowers its scale) when its own gradients
    are not finite; left alone, the discriminator could step while the generator it is
    trained against does not. Here a non-finite gradient anywhere makes the first gradient of
    every loss-scaled optimizer NaN (`tf.where`: finite gradients pass unchanged, bit for
    bit), so they all skip together. Without loss scaling nothing changes.
    """
    def scaled(optimizer):
        return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    if not any(scaled(optimizer) for _, optimizer, _, _ in updates):
        return updates
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g))
                            for *_, grads in updates for g in grads])
    out = []
    for name, optimizer, net, grads in updates:
        if scaled(optimizer):
            nan = tf.constant(float("nan"), grads[0].dtype)
            grads = [tf.where(finite, grads[0], nan)] + list(grads[1:])
        out.append((name, optimizer, net, grads))
    return out


def _scale(optimizer, loss):
    """Loss scaling for mixed precision (a LossScaleOptimizer); identity otherwise."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return optimizer.scale_loss(loss)
    return loss


def _unscaled_norm(optimizer, grads):
    """(global norm of the true gradients, weight) for the grad_norm trackers.

    Under a LossScaleOptimizer the gradients are scaled: the norm is divided by the scale, and
    a non-finite norm (overflow: the optimizer skips the step and lowers the scale) gets weight
    0 so that it neither shows up as a huge or NaN norm nor poisons the epoch mean. Without
    loss scaling a non-finite norm is reported as it is (weight 1).
    """
    norm = tf.linalg.global_norm(grads)
    if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return norm, 1.0
    norm = norm / tf.cast(optimizer.dynamic_scale, norm.dtype)
    finite = tf.math.is_finite(norm)
    return tf.where(finite, norm, 0.0), tf.cast(finite, norm.dtype)


def build_grdnet(config, compile=False, precision="float32", optimizers=None):
    """The GRDNet of a grdnet_tf config (sections model, data, loss, train), every variable
    created.

    Variables are created at (data.image_size, data.channels): call inside the strategy
    scope, under the Keras dtype policy of `precision` (`set_precision`). Batch norm is
    synchronised over the replicas when several train unless train.sync_batch_norm is off.
    With `compile`, the model is compiled with `optimizers` (generator, discriminator,
    segmentator) or, when None, `make_optimizers(config.optimizer, precision)`.
    """
    generator, discriminator, segmentator = build_networks(config)
    model = GRDNet(generator, discriminator, segmentator,
                   loss_weights=dataclasses.asdict(losses.LossWeights.from_config(config.loss)),
                   name="grdnet")
    height, width = config.data.image_size
    model.build_from_shape((height, width, config.data.channels))
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, FusedBatchNormalization):
            layer.cross_replica = bool(config.train.sync_batch_norm)
    if compile:
        model.compile(*(optimizers or make_optimizers(config.optimizer, precision)))
    return model


def set_precision(precision):
    """Sets the global Keras dtype policy of a `choices.PRECISIONS` name (train.precision):
    float32, mixed_bfloat16 or mixed_float16 (float32 variables, reduced-precision compute);
    layers take the policy in force when they are created."""
    choices.check("precision", precision, choices.PRECISIONS)
    keras.mixed_precision.set_global_policy(precision)


def make_optimizers(optimizer_config, precision="float32"):
    """Three Adam optimizers (generator, discriminator, segmentator) from config ``optimizer``;
    under mixed_float16 each is a LossScaleOptimizer (bfloat16 has float32's range and needs
    no loss scaling)."""
    def make(name):
        optimizer = keras.optimizers.Adam(learning_rate=optimizer_config.learning_rate,
                                          beta_1=optimizer_config.beta_1,
                                          beta_2=optimizer_config.beta_2, name=name)
        if precision == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer, name=f"{name}_scaled")
        return optimizer
    return make("g_adam"), make("d_adam"), make("s_adam")
