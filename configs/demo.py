"""What `make demo` runs: the embedded synthetic demo dataset at 64x64, trained end to end
in a few minutes on 2 CPU cores."""
from grdnet_tf.config import base_config


def get_config():
    c = base_config()
    c.data.image_size = (64, 64)
    c.model.base_width = 16
    c.model.stages = 3
    c.model.max_width = 64
    c.model.latent_channels = 32
    c.model.disc_base_width = 16
    c.model.disc_stages = 3
    c.model.seg_base_width = 16
    c.model.seg_depth = 3
    # The paper's Perlin scales 2^0..2^6 are for 256 px; the same blob size relative to
    # the image at 64 px is 2^0..2^4.
    c.synthesis.perlin_max_scale_log2 = 4
    # A 10x higher learning rate than the paper's 1e-4 and small batches: the demo must learn
    # in minutes (measured: lr 1e-4 barely moves the segmentator in 100 steps).
    c.optimizer.learning_rate = 1e-3
    # 90 epochs (1,350 steps on the 120 training images): with 60 the validation
    # segmentator loss was still falling at the last epoch (best checkpoint at epoch 57 of
    # 60); with 90 it picks epoch 85 (docs/results.md, "Demo with 100 validation normals").
    c.train.epochs = 90
    c.train.batch_size = 8
    c.train.checkpoint_every_steps = 50
    c.train.log_every_steps = 10
    c.train.image_every_steps = 100
    return c
