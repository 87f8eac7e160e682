"""Seconds, for tests: 32x32, a few channels, two epochs of a handful of steps."""
from grdnet_tf.config import base_config


def get_config():
    c = base_config()
    c.data.image_size = (32, 32)
    c.model.base_width = 4
    c.model.stages = 2
    c.model.max_width = 8
    c.model.latent_channels = 4
    c.model.latent_dim = 16
    c.model.disc_base_width = 4
    c.model.disc_stages = 2
    c.model.seg_base_width = 4
    c.model.seg_depth = 2
    c.train.epochs = 2
    c.train.batch_size = 2
    c.train.steps_per_epoch = 2
    c.train.checkpoint_every_steps = 1
    c.train.log_every_steps = 1
    c.train.image_every_steps = 2
    c.scoring.smoothing_kernel = 3
    return c
