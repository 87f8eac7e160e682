"""SE / CBAM attention (Hu et al. 2018; Woo et al. 2018) in the residual blocks."""
import hashlib

import numpy as np
import pytest
import keras
import tensorflow as tf

from grdnet_tf.config import base_config, freeze, from_dict
from grdnet_tf.models.attention import CBAM, SqueezeExcitation, hidden_width
from grdnet_tf.models.blocks import PreActResidualBlock
from grdnet_tf.models.networks import (Discriminator, Generator, Segmentator,
                                       build_networks)
from helpers_images import random_images
from helpers_layers import run_layer_test
from helpers_nets import assert_every_weight_gets_gradient

# One stage: a downsampling block per encoder, an upsampling block in the decoder; the
# segmentator at depth 1 adds an identity-shortcut block. Widths 8-16 give every attention
# MLP its default 8 hidden units.
SMALL = dict(base_width=8, max_width=16, stages=1)
SMALL_SEG = dict(base_width=8, max_width=16, depth=1)


def _run(nets, x, training=False):
    """Calls each network on x (the segmentator on concat(x, x))."""
    return [net(tf.concat([x, x], -1) if isinstance(net, Segmentator) else x,
                training=training) for net in nets]


def _attention_variables(net):
    return [v for v in net.variables if "/attention/" in v.path]


def test_hidden_width_rule():
    assert hidden_width(32, 16, 8) == 8      # floor
    assert hidden_width(256, 16, 8) == 16    # C // r
    assert hidden_width(4, 16, 8) == 4       # never wider than C
    assert hidden_width(512, 8, 8) == 64
    assert SqueezeExcitation().min_hidden == CBAM().min_hidden == 8


@pytest.mark.parametrize("layer_cls", [SqueezeExcitation, CBAM])
def test_layer_shapes_gates_in_unit_interval(layer_cls):
    layer = layer_cls()
    x = tf.constant(4.0 * random_images((2, 8, 6, 64)) - 2.0)
    y, gates = layer(x, return_attention=True)
    assert y.shape == x.shape and y.dtype == tf.float32
    np.testing.assert_array_equal(layer(x), y)
    # Hidden width max(64 // 16, 8) = 8; SE has 64*8 + 8 + 8*64 + 64 = 1096 weights.
    assert layer.reduce.units == 8
    assert gates["channel"].shape == (2, 1, 1, 64)
    expected = x * gates["channel"]
    if layer_cls is CBAM:
        assert gates["spatial"].shape == (2, 8, 6, 1)
        expected = expected * gates["spatial"]
        assert layer.count_params() == 1096 + 7 * 7 * 2 + 1
    else:
        assert set(gates) == {"channel"} and layer.count_params() == 1096
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    for gate in gates.values():
        assert gate.dtype == tf.float32
        assert 0.0 <= float(tf.reduce_min(gate)) and float(tf.reduce_max(gate)) <= 1.0
        assert float(tf.math.reduce_std(gate)) > 0  # gates depend on the input


@pytest.mark.parametrize("make", [
    lambda: SqueezeExcitation(reduction=8, min_hidden=2, name="se"),
    lambda: CBAM(reduction=4, spatial_kernel=3, min_hidden=3, name="cbam"),
])
def test_layer_round_trips(tmp_path, make):
    layer, _ = run_layer_test(make, random_images((2, 8, 8, 16)), tmp_path)
    config = layer.get_config()
    for key, value in dict(reduction=layer.reduction, min_hidden=layer.min_hidden).items():
        assert config[key] == value
    if isinstance(layer, CBAM):
        assert config["spatial_kernel"] == 3


def test_mixed_float16_gates_in_float32(mixed_float16):
    x = random_images((2, 8, 8, 32))
    for layer in (SqueezeExcitation(), CBAM()):
        y, gates = layer(x, return_attention=True)
        assert y.dtype == tf.float16 and np.all(np.isfinite(y))
        assert all(g.dtype == tf.float32 for g in gates.values())
        assert all(w.dtype == "float32" for w in layer.weights)
        assert layer.reduce.compute_dtype == "float32"
    disc = Discriminator(channels=3, attention="cbam", **SMALL)
    features, logit = disc(random_images((1, 16, 16, 3)))
    assert disc.encoder.stem.compute_dtype == "float16"
    assert features.dtype == logit.dtype == tf.float32 and np.all(np.isfinite(features))


def test_attention_gates_the_residual_branch_only():
    """SE-ResNet placement: a closed gate leaves exactly the shortcut (here the identity)."""
    block = PreActResidualBlock(8, attention="se")
    x = random_images((1, 4, 4, 8))
    block(x)
    block.attention_layer.expand.bias.assign(np.full((8,), -1e4, np.float32))
    np.testing.assert_allclose(block(x), x, atol=1e-6)


def test_segmentator_attention_in_encoder_only():
    seg = Segmentator(channels=3, base_width=4, depth=2, attention="se")
    for i in range(3):
        assert getattr(seg, f"enc{i}").attention == "se"
    for i in range(2):
        assert getattr(seg, f"dec{i}").attention == "none"
    seg(random_images((1, 16, 16, 6)))
    for i in range(3):
        assert isinstance(getattr(seg, f"enc{i}").attention_layer, SqueezeExcitation)
    for i in range(2):
        assert getattr(seg, f"dec{i}").attention_layer is None


def _randomise_attention(net):
    """Attention weights away from their initial values (zero biases)."""
    rng = np.random.default_rng(1)
    for var in _attention_variables(net):
        var.assign(rng.normal(0.0, 0.1, var.shape).astype(np.float32))


@pytest.mark.parametrize("make", [
    lambda: Generator(channels=3, attention="cbam", attention_reduction=4, **SMALL),
    lambda: Generator(channels=3, attention="se", **SMALL),
    lambda: Segmentator(channels=3, attention="se", norm="group", attention_reduction=2,
                        **SMALL_SEG),
    lambda: Segmentator(channels=3, attention="cbam", **SMALL_SEG),
])
def test_network_round_trips_include_attention_variables(tmp_path, make):
    x = random_images((2, 16, 16, 6 if isinstance(make(), Segmentator) else 3))
    model, keys = run_layer_test(make, x, tmp_path, prepare=_randomise_attention)
    assert model.get_config()["attention"] in ("se", "cbam")
    n_attention = len(_attention_variables(model))
    assert n_attention > 0
    # tf.train.Checkpoint names the block attribute: .../stage0_block0/attention_layer/...
    assert len([k for k in keys if "/attention_layer/" in k]) == n_attention


def test_gradient_reaches_every_weight():
    # Fixed seed: a ReLU layer of k units with zero bias is entirely dead at initialisation
    # with odds ~2**-k (see the attention module), which would zero its kernel's gradient.
    keras.utils.set_random_seed(0)
    gen = Generator(channels=3, attention="cbam", **SMALL)
    disc = Discriminator(channels=3, attention="se", **SMALL)
    seg = Segmentator(channels=3, attention="cbam", **SMALL_SEG)
    assert_every_weight_gets_gradient(gen, disc, seg, tf.constant(random_images((2, 16, 16, 3))))
    for net in (gen, disc, seg):  # built by the forward above; their weights were covered
        assert _attention_variables(net), f"{net.name}: no attention variables"


def _digest(rows):
    return hashlib.sha256("\n".join(f"{name} {list(shape)}" for name, shape in rows)
                          .encode()).hexdigest()


# Paper config (256 px, conv bottleneck); parameter counts do not depend on the input size,
# so the networks are built at 32 px.
PAPER_COUNTS = {
    "none": (6_940_195, 2_477_505, 8_305_761),
    "se": (6_994_563, 2_498_265, 8_351_369),
    "cbam": (6_996_048, 2_498_760, 8_351_864),
}
# sha256 of the sorted "path [shape]" lines of the paper networks, computed with the code
# before attention existed (commit b8786e6): Keras variable paths (.keras / .weights.h5)
# and tf.train.Checkpoint keys (training checkpoints). 415 variables.
NONE_KERAS_PATHS = "5bf249c834c9350df6f696238b06a2cf29d457cb568b61ae85253ebea648f574"
NONE_CHECKPOINT_KEYS = "ce01b12091089dbc7e0ca2b0e02b9bff876ded8231ff37cdb0f841aae4e42c7f"


@pytest.mark.parametrize("attention", ["none", "se", "cbam"])
def test_paper_parameter_counts(tmp_path, attention):
    config = base_config()
    config.model.attention = attention
    nets = build_networks(freeze(config))
    _run(nets, tf.zeros((1, 32, 32, 3)))
    assert tuple(net.count_params() for net in nets) == PAPER_COUNTS[attention]
    if attention != "none":
        return
    # attention="none" is the pre-attention network: same variables, same paths, so
    # checkpoints and .keras files of earlier runs still load.
    assert not any(_attention_variables(net) for net in nets)
    paths = sorted((v.path, tuple(v.shape)) for net in nets for v in net.variables)
    assert len(paths) == 415 and _digest(paths) == NONE_KERAS_PATHS
    path = tf.train.Checkpoint(g=nets[0], d=nets[1], s=nets[2]).save(str(tmp_path / "ckpt"))
    keys = sorted((k, tuple(s)) for k, s in tf.train.list_variables(path)
                  if k.endswith("VARIABLE_VALUE") and not k.startswith("save_counter"))
    assert _digest(keys) == NONE_CHECKPOINT_KEYS


def test_config_wiring_and_validation():
    config = base_config()
    config.model.attention = "cbam"
    config.model.attention_reduction = 8
    gen, disc, seg = build_networks(freeze(config))
    for net in (gen, disc, seg):
        assert net.attention == "cbam" and net.attention_reduction == 8
    assert gen.decoder.get_config()["attention"] == "cbam"
    assert gen.second_encoder.get_config()["attention_reduction"] == 8
    # Run configs written before the key existed still load (default 16).
    assert from_dict({"model": {"attention": "se"}}).model.attention_reduction == 16
    for key, value in (("attention", "eca"), ("attention_reduction", 0)):
        bad = base_config()
        bad.model[key] = value
        with pytest.raises(ValueError, match=f"model.{key}"):
            freeze(bad)


@pytest.mark.parametrize("make,message", [
    (lambda: PreActResidualBlock(8, attention="eca"), r"attention='eca' .*'se', 'cbam'"),
    (lambda: PreActResidualBlock(8, attention_reduction=0), r"attention_reduction=0"),
    (lambda: Generator(attention="SE"), r"attention='SE'"),
    (lambda: Discriminator(attention="x"), r"attention='x'"),
    (lambda: Segmentator(attention_reduction=1.5), r"attention_reduction=1.5"),
    (lambda: SqueezeExcitation(reduction=0), r"reduction=0"),
    (lambda: CBAM(spatial_kernel=0), r"spatial_kernel=0"),
    (lambda: CBAM(min_hidden=-1), r"min_hidden=-1"),
])
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()
