"""GRDNet.train_step on a tiny model (32x32, widths 4-8, one stage per network), eagerly, on
fixed random batches.

What one step must do (docs/method.md §3): a discriminator update over discriminator weights only,
a generator update over generator weights only (the adversarial feature-matching term
reaching the generator through X̂), a segmentator update over segmentator weights only, with
one generator forward. Gradient isolation is checked against gradients computed here from
the networks and `grdnet_tf.losses` directly, not through GRDNet.
"""
import keras
import numpy as np
import pytest
import tensorflow as tf

from grdnet_tf import keys, losses
from grdnet_tf.models import networks
from grdnet_tf.models import build_grdnet
from dist_worker import make_config

ORDER = ("discriminator", "generator", "segmentator")


def make_model(seed=0, precision="float32", **loss):
    """GRDNet of the tiny config with one stage per network (dist_worker.make_config),
    compiled with the trainer's optimizers."""
    config = make_config()
    config.loss.update(loss)
    keras.utils.set_random_seed(seed)
    model = build_grdnet(config, compile=True, precision=precision)
    return model


def make_batch(seed=0, batch=2, size=32):
    """X, X_n (X with a random patch inside M), M and an ROI that cuts M."""
    from dist_worker import fixed_batch  # one definition, shared with the worker script
    return fixed_batch(batch=batch, size=size, seed=seed)


def networks_of(model):
    return {"discriminator": model.discriminator, "generator": model.generator,
            "segmentator": model.segmentator}


def ids(variables):
    return [id(v) for v in variables]


def record_updates(model, monkeypatch):
    """Wraps each optimizer's apply_gradients; returns the list of (network, grads, vars)."""
    calls = []
    for name, optimizer in model.optimizers.items():
        real = optimizer.apply_gradients

        def apply_gradients(grads_and_vars, name=name, real=real, **kwargs):
            grads_and_vars = list(grads_and_vars)
            calls.append((name, [g for g, _ in grads_and_vars], [v for _, v in grads_and_vars]))
            return real(grads_and_vars, **kwargs)

        monkeypatch.setattr(optimizer, "apply_gradients", apply_gradients)
    return calls


def reference_gradients(model, batch):
    """Each network's gradient of its own loss (docs/method.md §3), batch means."""
    w = model.weights_
    x, x_n = batch[keys.IMAGE], batch[keys.PERTURBED]
    gen, disc, seg = model.generator, model.discriminator, model.segmentator
    with tf.GradientTape(persistent=True) as tape:
        x_hat, z, z_hat = gen(x_n, training=True)
        features_real, logit_real = disc(x, training=True)
        features_fake, logit_fake = disc(x_hat, training=True)
        d_loss = tf.reduce_mean(losses.discriminator_loss(logit_real, logit_fake))
        g_loss = tf.reduce_mean(losses.generator_losses(
            x, x_hat, z, z_hat, features_real, features_fake, w)["generator"])
        anomaly_map = seg(tf.concat([x_n, tf.stop_gradient(x_hat)], axis=-1), training=True)
        s_loss = w.w_focal * tf.reduce_mean(losses.segmentation_loss(
            anomaly_map, batch[keys.MASK], batch[keys.ROI], gamma=w.focal_gamma,
            alpha=w.focal_alpha, roi_mode=w.roi_mode))
    grads = {"discriminator": tape.gradient(d_loss, disc.trainable_variables),
             "generator": tape.gradient(g_loss, gen.trainable_variables),
             "segmentator": tape.gradient(s_loss, seg.trainable_variables)}
    return grads, {"discriminator": d_loss, "generator": g_loss, "segmentator": s_loss}


@pytest.fixture(scope="module")
def model():
    return make_model()


def test_optimizers_are_built_on_disjoint_networks(model):
    nets = networks_of(model)
    seen = set()
    for name, optimizer in model.optimizers.items():
        # Keras 3 keeps the variables an optimizer was built on in `_trainable_variables`.
        assert ids(optimizer._trainable_variables) == ids(nets[name].trainable_variables), name
        assert not seen & set(ids(optimizer._trainable_variables)), name
        seen |= set(ids(optimizer._trainable_variables))
    # Every trainable variable of the model belongs to exactly one network.
    assert seen == set(ids(model.trainable_variables))
    assert len(seen) == len(model.trainable_variables) > 50


def test_each_update_uses_only_its_network_and_its_loss(model, monkeypatch):
    batch = make_batch(seed=1)
    nets = networks_of(model)
    ref_grads, ref_losses = reference_gradients(model, batch)
    before = [v.numpy() for v in model.trainable_variables]
    calls = record_updates(model, monkeypatch)

    logs = model.train_step(batch)

    assert [name for name, _, _ in calls] == list(ORDER)
    for name, grads, variables in calls:
        assert ids(variables) == ids(nets[name].trainable_variables), name
        assert all(g is not None for g in grads), name
        for g, r, v in zip(grads, ref_grads[name], variables):
            np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-6, err_msg=f"{name}: {v.path}")
        assert float(tf.linalg.global_norm(grads)) > 0, name
    np.testing.assert_allclose(logs["discriminator_loss"], ref_losses["discriminator"], rtol=1e-5)
    np.testing.assert_allclose(logs["generator_loss"], ref_losses["generator"], rtol=1e-5)
    np.testing.assert_allclose(logs["segmentator_loss"], ref_losses["segmentator"], rtol=1e-5)
    np.testing.assert_allclose(logs["total_loss"],
                               ref_losses["generator"] + ref_losses["segmentator"], rtol=1e-5)
    # Adam moved (nearly) every weight of every network, and nothing is NaN.
    changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, model.trainable_variables)]
    assert sum(changed) >= 0.9 * len(changed)
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert all(np.isfinite(v.numpy()).all() for v in model.variables)


def test_generator_forward_runs_once_per_step(model, monkeypatch):
    counts = dict.fromkeys(("generator", "decoder", "discriminator", "segmentator"), 0)

    def counting(cls, name):
        real = cls.call

        def call(self, *args, **kwargs):
            counts[name] += 1
            return real(self, *args, **kwargs)
        monkeypatch.setattr(cls, "call", call)

    counting(networks.Generator, "generator")
    counting(networks.ResidualDecoder, "decoder")
    counting(networks.Discriminator, "discriminator")
    counting(networks.Segmentator, "segmentator")
    batch = make_batch(seed=2)
    model.train_step(batch)
    model.train_step(batch)
    assert counts == {"generator": 2, "decoder": 2, "discriminator": 4, "segmentator": 2}


def test_adversarial_term_reaches_the_generator(monkeypatch):
    # L_gan = L_adv only: the generator update is the feature-matching gradient through X̂.
    model = make_model(seed=3, w_con=0.0, w_enc=0.0)
    batch = make_batch(seed=3)
    gen = model.generator
    with tf.GradientTape() as tape:
        x_hat, _, _ = gen(batch[keys.PERTURBED], training=True)
        features_real, _ = model.discriminator(batch[keys.IMAGE], training=True)
        features_fake, _ = model.discriminator(x_hat, training=True)
        adversarial = model.weights_.w_adv * tf.reduce_mean(
            losses.adversarial_loss(features_real, features_fake))
    grads = dict(zip(ids(gen.trainable_variables), tape.gradient(adversarial,
                                                                 gen.trainable_variables)))
    for part in (gen.encoder, gen.decoder):
        part_grads = [grads[i] for i in ids(part.trainable_variables)]
        assert all(g is not None for g in part_grads), part.name
        assert float(tf.linalg.global_norm(part_grads)) > 1e-6, part.name
    # The second encoder does not influence X̂.
    assert all(grads[i] is None for i in ids(gen.second_encoder.trainable_variables))

    calls = record_updates(model, monkeypatch)
    model.train_step(batch)
    (_, g_grads, g_vars), = [c for c in calls if c[0] == "generator"]
    applied = dict(zip(ids(g_vars), g_grads))
    decoder = [applied[i] for i in ids(gen.decoder.trainable_variables)]
    assert float(tf.linalg.global_norm(decoder)) > 1e-6


def test_fit_runs_two_steps():
    model = make_model(seed=4)
    batches = [make_batch(seed=s) for s in (5, 6)]
    data = {k: tf.concat([b[k] for b in batches], axis=0) for k in batches[0]}
    dataset = tf.data.Dataset.from_tensor_slices(data).batch(2, drop_remainder=True)
    history = model.fit(dataset, epochs=1, shuffle=False, verbose=0)
    for name in ("total_loss", "generator_loss", "adversarial_loss", "contextual_loss",
                 "encoder_loss", "discriminator_loss", "segmentator_loss"):
        assert len(history.history[name]) == 1 and np.isfinite(history.history[name][0]), name
    assert [int(o.iterations) for o in model.optimizers.values()] == [2, 2, 2]


def test_mixed_float16_train_step(mixed_float16):
    model = make_model(seed=5, precision="mixed_float16")
    assert all(isinstance(o, keras.optimizers.LossScaleOptimizer)
               for o in model.optimizers.values())
    assert model.generator.compute_dtype == "float16"
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    # Step 1 at the initial loss scale 2**15 (float16 gradients may overflow: the optimizer
    # then skips that update and halves the scale); step 2 at a scale of 2**8.
    for seed, scale in ((7, None), (8, 256.0)):
        if scale:
            for optimizer in model.optimizers.values():
                optimizer.dynamic_scale.assign(scale)
        batch = make_batch(seed=seed)
        ref_grads, _ = reference_gradients(model, batch)
        model.reset_metrics()
        iterations = {n: int(o.iterations) for n, o in model.optimizers.items()}
        logs = model.train_step(batch)
        # Losses finite; grad norms are those of the unscaled gradients (not x 2**15), and a
        # skipped step reports 0, not inf/NaN (the trainer stops on any non-finite log).
        assert all(np.isfinite(float(v)) for v in logs.values()), logs
        for name, optimizer in model.optimizers.items():
            norm = float(logs[f"{name}_grad_norm"])
            if int(optimizer.iterations) == iterations[name] + 1:
                np.testing.assert_allclose(norm, tf.linalg.global_norm(ref_grads[name]),
                                           rtol=0.05, err_msg=name)
            else:
                assert scale is None and norm == 0.0, name
    assert all(np.isfinite(v.numpy()).all() for v in model.variables)
    out = model(make_batch(seed=7)[keys.IMAGE])
    assert out[keys.RECONSTRUCTION].dtype == out[keys.RAW_ANOMALY_MAP].dtype == tf.float32
