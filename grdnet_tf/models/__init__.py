"""The GRD-Net networks and the GRDNet model (`build_grdnet(config)` builds one)."""
from grdnet_tf.models.grdnet import GRDNet, build_grdnet, make_optimizers  # noqa: F401
