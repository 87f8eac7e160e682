"""The paper's setting (Ferrari et al. 2023): 256x256 RGB, 32x8x8 convolutional bottleneck,
w1=1, w2=50, w3=1, focal gamma 2, Adam 1e-4, plateau patience 3 with factor e^-0.1,
rotation +-90 degrees, 200 epochs, batch 8 (docs/method.md §1-§4). GPU work: about 1 image/s
on 2 CPU cores (docs/tf-notes.md)."""
from grdnet_tf.config import base_config


def get_config():
    return base_config()
