"""The one colour map of anomaly heatmaps: evaluation overlays and the SavedModel's PNGs.

``JET_LUT`` is used by the evaluation overlays (``colorize``, numpy) and by the export's
``serve_bytes`` (``export_lib.colorize`` gathers from this same table in TF). Both index it
with ``round(v * 255)`` (round half to even, like ``tf.round``) after clipping to [0, 1].

No TensorFlow here: the plots must import fast.
"""
import numpy as np


def _jet_lut() -> np.ndarray:
    # Piecewise-linear jet: blue -> cyan -> yellow -> red, dark at both ends.
    x = np.linspace(0.0, 1.0, 256)
    rgb = [np.clip(1.5 - np.abs(4.0 * x - c), 0.0, 1.0) for c in (3.0, 2.0, 1.0)]
    lut = np.round(np.stack(rgb, axis=-1) * 255.0).astype(np.uint8)
    lut.flags.writeable = False
    return lut


JET_LUT: np.ndarray = _jet_lut()   # uint8 [256, 3], RGB; read-only
ALPHA = 0.5                        # heatmap weight of overlays (plots and serve_bytes)


def colorize(anomaly_map) -> np.ndarray:
    """Map float [H, W] (or [H, W, 1]) values in [0, 1] to uint8 RGB [H, W, 3] via JET_LUT.

    Values outside [0, 1] are clipped; NaN maps to index 0.
    """
    a = np.asarray(anomaly_map, dtype=np.float32)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim != 2:
        raise ValueError(f"anomaly_map must be [H, W], got shape {a.shape}")
    idx = np.rint(np.clip(np.nan_to_num(a, nan=0.0), 0.0, 1.0) * 255.0).astype(np.uint8)
    return JET_LUT[idx]
