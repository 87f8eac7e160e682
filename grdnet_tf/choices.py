"""The named choices of grdnet_tf: one tuple per option, importable without TensorFlow.

`grdnet_tf.config.validate` checks every config value against these tuples; the layers
and functions that take one of these options check their public arguments against the same
tuples, so a choice is spelled in one place.
"""

NORMS = ("batch", "group", "instance", "none")          # model.norm
ATTENTIONS = ("none", "se", "cbam")                      # model.attention
BOTTLENECKS = ("conv", "dense")                          # model.bottleneck
ENCODER_BOTTLENECKS = BOTTLENECKS + ("none",)            # ResidualEncoder ("none": features)
ACTIVATIONS = ("relu", "leaky_relu")                     # residual blocks
RESAMPLES = ("none", "down", "up")                       # residual blocks
CHANNELS = (1, 3)                                        # data.channels
ENCODER_NORMS = ("l2", "l1")                             # loss.enc_norm
ROI_MODES = ("target", "prediction")                     # loss.roi_mode
STRATEGIES = ("auto", "mirrored", "multi_worker", "default")  # train.strategy
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")  # train.precision
BEST_METRICS = ("segmentator_loss", "total_loss")        # train.best_metric
PATCH_SAMPLINGS = ("random", "grid")                     # data.patch_sampling
SMOOTHING_AUTO = ("validation", "image_size")            # scoring.smoothing_auto
MAP_SOURCES = ("segmentator", "residual", "sum")         # maps a score is taken from
MAP_CHOICES = MAP_SOURCES + ("auto",)                    # scoring.pixel_map, image_map
IMAGE_BASELINES = ("none", "position")                   # how the image map is compared
IMAGE_BASELINE_CHOICES = IMAGE_BASELINES + ("auto",)     # scoring.image_baseline
CALIBRATION_ANOMALIES = ("training", "defects")          # scoring.calibration_anomalies
# scoring.pixel_calibration_anomalies ("same": scoring.calibration_anomalies)
PIXEL_CALIBRATION_ANOMALIES = ("same",) + CALIBRATION_ANOMALIES
ROI_THRESHOLDS = ("otsu", "triangle", "fixed")           # grdnet-roi --threshold
ROI_FEATURES = ("grey", "border_distance", "local_contrast")  # grdnet-roi --feature
ROI_POLARITIES = ("auto", "bright", "dark")              # grdnet-roi --polarity
ROI_SPLITS = ("train", "validation", "test")             # grdnet-roi --splits
LAYOUTS = ("auto", "mvtec", "mvtec3d", "folder")         # data.layout


def check(name, value, allowed):
    """Raises ValueError unless ``value`` is one of ``allowed``; the message names ``name``."""
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {tuple(allowed)}")


def check_positive_int(name, value):
    """Raises ValueError unless ``value`` is an integer >= 1; the message names ``name``."""
    if int(value) != value or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def check_open_unit_interval(name, value):
    """Raises ValueError unless 0 < ``value`` < 1; the message names ``name``."""
    if not 0.0 < value < 1.0:
        raise ValueError(f"{name}={value!r} must lie in (0, 1), ends excluded")
