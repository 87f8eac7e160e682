"""The paper's setting (Ferrari et al. 2023): 256x256 RGB, 32x8x8 convolutional bottleneck,
two pre-activation residual blocks per stage (the paper's Fig. 5), w1=1, w2=50, w3=1, focal
gamma 2, Adam 1e-4, plateau patience 3 with factor e^-0.1, rotation +-90 degrees, 200
epochs, batch 8 (docs/method.md §1-§4). GPU work: about 1 image/s on 2 CPU cores
(docs/tf-notes.md)."""
from grdnet_tf.config import base_config


def get_config():
    c = base_config()
    # base_config keeps one block per stage (what cpu_small and demo inherit); the paper
    # draws two per stage, in the generator's encoders and decoder and the discriminator.
    c.model.blocks_per_stage = 2
    return c
