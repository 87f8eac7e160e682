"""Issue 2: the three GRD-Net networks (shapes, dtypes, params, serialization, gradients)."""
import numpy as np
import pytest
import tensorflow as tf

from grdnet_tf.config import base_config, freeze
from grdnet_tf.models.networks import (Discriminator, Generator, Segmentator,
                                       build_networks)
from helpers_images import random_images
from helpers_layers import run_layer_test
from helpers_nets import assert_every_weight_gets_gradient

SMALL = dict(base_width=4, max_width=16)


@pytest.mark.parametrize("height,width", [(64, 64), (128, 96), (256, 256)])
@pytest.mark.parametrize("channels", [1, 3])
def test_generator_shapes_and_dtypes(height, width, channels):
    gen = Generator(channels=channels, stages=3, latent_channels=5, **SMALL)
    x = random_images((2, height, width, channels))
    x_hat, z, z_hat = gen(x)
    assert x_hat.shape == (2, height, width, channels)
    assert z.shape == z_hat.shape == (2, height // 8, width // 8, 5)
    assert x_hat.dtype == z.dtype == z_hat.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(x_hat)) and float(tf.reduce_max(x_hat)) <= 1.0
    recon, z2 = gen.reconstruct(x)
    np.testing.assert_allclose(recon, x_hat, atol=1e-6)
    np.testing.assert_allclose(z2, z, atol=1e-6)


def test_dense_bottleneck_shapes():
    gen = Generator(channels=3, stages=2, bottleneck="dense", latent_dim=7,
                    image_size=(32, 48), **SMALL)
    x_hat, z, z_hat = gen(random_images((2, 32, 48, 3)))
    assert x_hat.shape == (2, 32, 48, 3) and z.shape == z_hat.shape == (2, 7)
    with pytest.raises(ValueError, match="image_size"):
        gen(random_images((2, 32, 32, 3)))


@pytest.mark.parametrize("height,width", [(64, 64), (128, 96)])
@pytest.mark.parametrize("channels", [1, 3])
def test_discriminator_and_segmentator_shapes(height, width, channels):
    disc = Discriminator(channels=channels, stages=3, **SMALL)
    features, logit = disc(random_images((2, height, width, channels)))
    assert features.shape == (2, height // 8, width // 8, 16) and logit.shape == (2, 1)
    assert features.dtype == logit.dtype == tf.float32
    seg = Segmentator(channels=channels, base_width=4, depth=3)
    anomaly_map = seg(random_images((2, height, width, 2 * channels)))
    assert anomaly_map.shape == (2, height, width, 1) and anomaly_map.dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(anomaly_map)) <= float(tf.reduce_max(anomaly_map)) <= 1.0


def test_segmentator_output_prior_sets_the_initial_map():
    """The output bias starts at log(pi / (1 - pi)): the untrained map sits near pi
    everywhere; 0.5 keeps Keras' zero bias (the weights of a run are bit-identical)."""
    x = random_images((2, 32, 32, 6))
    default = Segmentator(channels=3, base_width=4, depth=2)
    tf.keras.utils.set_random_seed(3)
    half = Segmentator(channels=3, base_width=4, depth=2, output_prior=0.5)
    half(x)
    np.testing.assert_array_equal(half.out_conv.bias.numpy(), [0.0])
    tf.keras.utils.set_random_seed(3)
    prior = Segmentator(channels=3, base_width=4, depth=2, output_prior=0.01)
    anomaly_map = prior(x).numpy()
    np.testing.assert_allclose(prior.out_conv.bias.numpy(), [-4.59512], atol=1e-5)
    # Same kernels as `half` (same seed), only the bias differs.
    np.testing.assert_array_equal(prior.out_conv.kernel.numpy(), half.out_conv.kernel.numpy())
    assert 0.003 < anomaly_map.min() and anomaly_map.max() < 0.03
    assert abs(float(np.median(anomaly_map)) - 0.01) < 0.005
    assert Segmentator.from_config(prior.get_config()).output_prior == 0.01
    assert default.output_prior == 0.5
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError, match=f"output_prior={bad} must lie in"):
            Segmentator(channels=3, output_prior=bad)


def test_discriminator_accepts_any_generator_size():
    disc = Discriminator(channels=3, stages=2, **SMALL)
    assert disc(random_images((1, 32, 32, 3)))[1].shape == (1, 1)
    assert disc(random_images((1, 64, 48, 3)))[1].shape == (1, 1)


def test_paper_parameter_counts():
    """Pinned: an accidental architecture change must fail here (numbers in the README)."""
    config = freeze(base_config())
    generator, discriminator, segmentator = build_networks(config)
    x = tf.zeros((1, 256, 256, 3))
    generator(x), discriminator(x), segmentator(tf.zeros((1, 256, 256, 6)))
    assert generator.count_params() == 6_940_195
    assert discriminator.count_params() == 2_477_505
    assert segmentator.count_params() == 8_305_761
    # Bottleneck of the paper: 32 x 8 x 8 at 256 px.
    assert generator(x)[1].shape == (1, 8, 8, 32)


def test_paper_dense_bottleneck_parameter_count():
    config = base_config()
    config.model.bottleneck = "dense"
    generator, _, _ = build_networks(freeze(config))
    _, z, _ = generator(tf.zeros((1, 256, 256, 3)))
    assert z.shape == (1, 2048)
    assert generator.count_params() == 107_533_539


@pytest.mark.parametrize("make,shape", [
    (lambda: Generator(channels=3, stages=2, **SMALL), (2, 32, 32, 3)),
    (lambda: Generator(channels=1, stages=2, bottleneck="dense", latent_dim=8,
                       image_size=(32, 32), norm="group", **SMALL), (2, 32, 32, 1)),
    (lambda: Discriminator(channels=3, stages=2, norm="instance", **SMALL), (2, 32, 32, 3)),
    (lambda: Segmentator(channels=3, base_width=4, depth=2, norm="none"), (2, 32, 32, 6)),
])
def test_serialization_and_checkpoint_round_trips(tmp_path, make, shape):
    run_layer_test(make, random_images(shape), tmp_path)


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_gradient_reaches_every_weight(norm):
    gen = Generator(channels=3, stages=2, norm=norm, **SMALL)
    disc = Discriminator(channels=3, stages=2, norm=norm, **SMALL)
    seg = Segmentator(channels=3, base_width=4, depth=2, norm=norm)
    assert_every_weight_gets_gradient(gen, disc, seg, tf.constant(random_images((2, 32, 32, 3))))


def test_mixed_float16_outputs_are_float32(mixed_float16):
    gen = Generator(channels=3, stages=2, **SMALL)
    disc = Discriminator(channels=3, stages=2, **SMALL)
    seg = Segmentator(channels=3, base_width=4, depth=2)
    x = random_images((1, 32, 32, 3))
    x_hat, z, z_hat = gen(x)
    features, logit = disc(x)
    anomaly_map = seg(np.concatenate([x, x], -1))
    assert gen.encoder.stem.compute_dtype == "float16"
    for t in (x_hat, z, z_hat, features, logit, anomaly_map):
        assert t.dtype == tf.float32
        assert np.all(np.isfinite(t))


@pytest.mark.parametrize("make,message", [
    (lambda: Generator(channels=2), r"channels=2 .*\(1, 3\)"),
    (lambda: Generator(bottleneck="vae"), r"bottleneck='vae' .*\('conv', 'dense'\)"),
    (lambda: Generator(norm="layer"), r"norm='layer' .*'batch'"),
    (lambda: Generator(bottleneck="dense"), r"image_size"),
    (lambda: Discriminator(channels=4), r"channels=4"),
    (lambda: Segmentator(channels=0), r"channels=0"),
    (lambda: Segmentator(depth=0), r"depth=0"),
])
def test_bad_constructor_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_size_not_divisible_names_the_argument():
    gen = Generator(channels=3, stages=3, **SMALL)
    with pytest.raises(ValueError, match=r"height=36 must be divisible by 2\*\*3=8"):
        gen(random_images((1, 36, 32, 3)))
    seg = Segmentator(channels=3, base_width=4, depth=2)
    with pytest.raises(ValueError, match=r"width=30 must be divisible by 2\*\*2=4"):
        seg(random_images((1, 32, 30, 6)))
    with pytest.raises(ValueError, match=r"expects 3 input channels, got 1"):
        gen(random_images((1, 32, 32, 1)))



def test_paper_config_has_two_blocks_per_stage():
    """configs/paper.py follows the paper's Fig. 5: two residual blocks per stage."""
    from grdnet_tf.config import load_config_file

    config = load_config_file("configs/paper.py")
    assert config.model.blocks_per_stage == 2
    generator, discriminator, segmentator = build_networks(config)
    x = tf.zeros((1, 256, 256, 3))
    generator(x), discriminator(x)
    # Pinned (one block per stage: 6_940_195 and 2_477_505, test_paper_parameter_counts).
    assert generator.count_params() == 14_035_939
    assert discriminator.count_params() == 5_230_497
    names = generator.encoder.block_names
    assert len(names) == 2 * config.model.stages and names[:4] == ["stage0_block0", "stage0_block1", "stage1_block0", "stage1_block1"]
