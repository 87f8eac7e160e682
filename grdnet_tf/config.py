"""The one configuration schema of grdnet_tf (ml_collections), with validation.

Every numeric choice of data synthesis, networks, losses, optimisation and scoring lives
here; the files in ``configs/`` start from :func:`base_config` and change a few values, and
``--config.KEY=VALUE`` (or :func:`with_overrides`) changes single keys. Each key is
documented next to its default in :func:`base_config` (the paper's value where the paper
gives one; docs/method.md cites the sections). :func:`validate` is the one place where the
values are checked (the allowed names come from :mod:`grdnet_tf.choices`): a config that
passes :func:`freeze` is not rejected later for its values, only for its data (missing
folders, too few images, a batch not divisible by the replicas). A run writes its resolved
config into its run directory, where evaluation and export read it back.
"""
import copy
import json
import math
import os

import ml_collections

from grdnet_tf import choices

ALLOWED = {
    "data.channels": choices.CHANNELS,
    "model.bottleneck": choices.BOTTLENECKS,
    "model.norm": choices.NORMS,
    "model.attention": choices.ATTENTIONS,
    "loss.enc_norm": choices.ENCODER_NORMS,
    "loss.roi_mode": choices.ROI_MODES,
    "train.strategy": choices.STRATEGIES,
    "train.precision": choices.PRECISIONS,
    "train.best_metric": choices.BEST_METRICS,
    "data.patch_sampling": choices.PATCH_SAMPLINGS,
    "scoring.smoothing_auto": choices.SMOOTHING_AUTO,
    "scoring.pixel_map": choices.MAP_CHOICES,
    "scoring.image_map": choices.MAP_CHOICES,
    "scoring.image_baseline": choices.IMAGE_BASELINE_CHOICES,
    "scoring.calibration_anomalies": choices.CALIBRATION_ANOMALIES,
    "scoring.pixel_calibration_anomalies": choices.PIXEL_CALIBRATION_ANOMALIES,
    "data.layout": choices.LAYOUTS,
}

NON_NEGATIVE = (
    "loss.w_adv", "loss.w_con", "loss.w_enc", "loss.w_l1", "loss.w_ssim", "loss.w_focal",
    "loss.focal_gamma", "synthesis.rotation_deg", "synthesis.perlin_rotation_deg",
    "synthesis.texture_colour_weight", "synthesis.texture_self_weight",
    "synthesis.texture_perlin_weight", "synthesis.texture_external_weight",
    "synthesis.texture_builtin_weight", "synthesis.texture_ops", "synthesis.mask_area_min",
    "synthesis.mask_area_max", "optimizer.min_learning_rate", "train.steps_per_epoch", "train.eval_every_epochs",
    "data.patch_scale", "data.patch_stride", "scoring.smoothing_kernel",
    "train.worker_timeout_seconds",
)
POSITIVE_INT = (
    "model.base_width", "model.stages", "model.blocks_per_stage", "model.max_width",
    "model.latent_channels", "model.latent_dim", "model.disc_base_width",
    "model.disc_stages", "model.seg_base_width", "model.seg_depth",
    "model.attention_reduction", "train.epochs",
    "train.batch_size", "train.checkpoint_every_steps", "train.keep_checkpoints",
    "train.log_every_steps", "train.image_every_steps", "scoring.calibration_repeats",
    "optimizer.plateau_patience", "synthesis.colour_field_min_cells",
)
UNIT_INTERVAL = (
    "synthesis.anomaly_prob", "synthesis.beta_min", "synthesis.beta_max",
    "synthesis.colour_smooth_prob", "synthesis.in_roi_prob",
    "synthesis.match_intensity_prob", "data.val_fraction", "scoring.threshold_quantile",
    "data.folder.normal_test_fraction", "scoring.pixel_threshold",
)
OPEN_UNIT_INTERVAL = ("model.seg_output_prior",)


def base_config() -> ml_collections.ConfigDict:
    """Defaults shared by every config file (paper values where the paper has them)."""
    c = ml_collections.ConfigDict()
    c.seed = 0  # seeds the weights, the validation split and every synthetic anomaly

    c.data = ml_collections.ConfigDict()
    # (height, width) the networks see; both divisible by 2**stages, 2**disc_stages and
    # 2**seg_depth.
    c.data.image_size = (256, 256)
    c.data.channels = 3  # 1 (grayscale) or 3 (RGB); input images are converted
    # How --data_dir is organised (grdnet_tf/data/mvtec.py): "mvtec" (MVTec AD: train/good,
    # validation/good, test/<defect>, ground_truth/<defect>/<stem>_mask.*), "mvtec3d" (the
    # native MVTec 3D-AD layout: <split>/<folder>/rgb/*, test/<defect>/gt/<stem>.*; xyz/ is
    # ignored), "folder" (a plain folder per class, as anomalib's Folder datamodule takes:
    # the data.folder.* keys) or "auto" (recognises the three; an unknown layout is an error
    # that lists them).
    c.data.layout = "auto"
    # Paths in data.roi_dir, data.roi_path and data.folder.* are relative to --data_dir (an
    # absolute path is used as given), so a run resumes and evaluates from any folder.
    # Folder with one ROI mask per training and validation image (same stem as the image);
    # validation images whose names also occur in training take theirs from
    # <roi_dir>/validation/ (required then). "" means <category>/train/roi and
    # <category>/validation/roi (mvtec, mvtec3d) when they exist; images without an ROI use
    # the whole image. Masks: white (nonzero) = defects matter; a mask with more than two
    # values (JPEG, antialiased edges) counts >= 128 (of 255) as inside, with a warning.
    c.data.roi_dir = ""
    # One ROI mask file for every image (a fixed camera): training, validation and test
    # images (the test ROI of ROI-restricted metrics); excludes data.roi_dir. "" = off.
    c.data.roi_path = ""
    # The plain folder layout (data.layout="folder"): folders inside --data_dir.
    c.data.folder = ml_collections.ConfigDict()
    c.data.folder.normal_dir = "good"  # normal images (training; test and validation too)
    # Defect folders of the test split, comma-separated; "" = every other folder of
    # --data_dir that holds images (except the folders named by the other keys).
    c.data.folder.abnormal_dirs = ""
    # Normal test images; "" = a seeded data.folder.normal_test_fraction of normal_dir is
    # held out for the test split (never trained or validated on).
    c.data.folder.normal_test_dir = ""
    c.data.folder.normal_test_fraction = 0.2
    # Normal validation images; "" = a seeded data.val_fraction of the training normals.
    c.data.folder.val_dir = ""
    # Ground-truth masks of the defect images: <mask_dir>/<defect>/<stem>[_mask].* or
    # <mask_dir>/<stem>[_mask].*; "" = none (image metrics only).
    c.data.folder.mask_dir = ""
    # Held-out seeded fraction of train/good used for validation when the category has no
    # validation/good folder.
    c.data.val_fraction = 0.1
    c.data.skip_bad_files = False  # skip unreadable images (counted, reported), not fail
    c.data.use_roi = True  # False ignores every ROI file (whole-image ROIs), for ablations
    # Patch training and tiled inference (grdnet_tf/data/tiling.py). 0 = off: every image is
    # resized whole to image_size. s > 0: every image is resized by s (1.0 = native pixels;
    # raised where an image would be smaller than one patch) and the networks see
    # image_size patches of it, random or grid crops in training (the ROI cropped with
    # them) and overlapping tiles at inference, stitched by averaging overlaps, so training
    # and inference see objects at the same magnification. Off by default.
    c.data.patch_scale = 0.0
    c.data.patch_stride = 0  # grid stride of grid crops and inference tiles; 0 = half a patch
    c.data.patch_sampling = "random"  # "random" crops, or the shuffled "grid" patches

    # Perlin anomalies, docs/method.md §1.
    c.synthesis = ml_collections.ConfigDict()
    c.synthesis.anomaly_prob = 0.75  # q: probability that a training sample gets an anomaly
    # Perlin grid scale 2**k per axis, k in [perlin_min_scale_log2, perlin_max_scale_log2].
    c.synthesis.perlin_min_scale_log2 = 0
    c.synthesis.perlin_max_scale_log2 = 6
    # Threshold on the noise (roughly in [-1, 1]) giving the binary mask; in (-1, 1).
    c.synthesis.perlin_threshold = 0.5
    # The Perlin noise is rotated by U(-r, r) degrees before thresholding.
    c.synthesis.perlin_rotation_deg = 90.0
    # Mask size in image-relative terms: mask_area_max > 0 thresholds each Perlin field so
    # that a fraction a of the image is anomalous, log(a) ~ U(log min, log max); 0 keeps
    # the fixed perlin_threshold (then the size follows the Perlin scale: a median 5.5%
    # of the image at the default scales).
    c.synthesis.mask_area_min = 0.002
    c.synthesis.mask_area_max = 0.0
    # Probability that an anomaly is confined to the ROI (the others fall anywhere; those
    # outside the ROI have target 0 and teach the segmentator to ignore the background).
    c.synthesis.in_roi_prob = 0.0
    # Probability that a texture's mean and standard deviation under the mask are matched
    # to the image's there (per channel): the anomaly then differs in structure, not in
    # brightness, so a bright patch on a dark part cannot be found from X_n alone.
    c.synthesis.match_intensity_prob = 0.0
    # Blending factor beta ~ U(beta_min, beta_max).
    c.synthesis.beta_min = 0.5
    c.synthesis.beta_max = 1.0
    # Relative odds of the texture sources colour / self (another training image) / Perlin
    # colour noise / external (texture_dir) / builtin (crops of two photographs shipped
    # with scikit-learn, grdnet_tf/data/textures.py).
    c.synthesis.texture_colour_weight = 1.0
    c.synthesis.texture_self_weight = 1.0
    c.synthesis.texture_perlin_weight = 1.0
    c.synthesis.texture_external_weight = 1.0
    c.synthesis.texture_builtin_weight = 0.0
    c.synthesis.texture_dir = ""  # optional folder of external (DTD-like) textures, recursive
    # Number of distinct random photometric operations (of the 10 of
    # grdnet_tf/data/texture_ops.py, as DRAEM) applied to each texture; 0 = none.
    c.synthesis.texture_ops = 0
    # Probability that a colour texture is a smooth random field (bilinear upsampling of a
    # random grid) rather than one uniform colour.
    c.synthesis.colour_smooth_prob = 0.5
    # Cells per axis of that random grid, uniform in [min, max].
    c.synthesis.colour_field_min_cells = 2
    c.synthesis.colour_field_max_cells = 8
    c.synthesis.rotation_deg = 90.0  # rotation augmentation range [-r, r] (0 disables)
    c.synthesis.flip_horizontal = False  # optional flips, each with probability 1/2
    c.synthesis.flip_vertical = False

    # Networks, docs/method.md §2.
    c.model = ml_collections.ConfigDict()
    # Generator encoder/decoder widths: stage i has min(base_width * 2**i, max_width)
    # channels; `stages` stride-2 stages of `blocks_per_stage` residual blocks.
    c.model.base_width = 32
    c.model.stages = 5
    c.model.blocks_per_stage = 1  # configs/paper.py: the paper's 2 (Fig. 5)
    c.model.max_width = 256
    # "conv": latent_channels x H/2**stages x W/2**stages; "dense": a latent_dim vector
    # (ties the generator to data.image_size).
    c.model.bottleneck = "conv"
    c.model.latent_channels = 32
    c.model.latent_dim = 2048
    c.model.norm = "batch"  # "batch", "group", "instance" or "none"
    c.model.disc_base_width = 32  # discriminator
    c.model.disc_stages = 5
    c.model.seg_base_width = 32  # segmentator U-Net
    c.model.seg_depth = 4
    # The anomaly map's value on every pixel at initialisation (the output bias starts at
    # log(pi / (1 - pi)); Lin et al. 2017's prior for focal loss). 0.5 = zero bias. 0.01 over
    # 3 seeds (docs/results.md): magnetic tile image and pixel AUROC up (three sessions);
    # tire image AUROC up on one machine and not on another (session 14), so the default
    # stays 0.5.
    c.model.seg_output_prior = 0.5
    # "none" (the paper's network), "se" (Squeeze-and-Excitation, Hu et al. 2018) or "cbam"
    # (Woo et al. 2018) in the residual blocks of the generator, the discriminator and the
    # segmentator's encoder.
    c.model.attention = "none"
    # Reduction ratio r of the attention MLPs (hidden width max(C // r, 8), at most C).
    c.model.attention_reduction = 16

    # Losses, docs/method.md §3.
    c.loss = ml_collections.ConfigDict()
    c.loss.w_adv = 1.0  # w1, w2, w3 of L_gan = w1 L_adv + w2 L_con + w3 L_enc
    c.loss.w_con = 50.0
    c.loss.w_enc = 1.0
    c.loss.w_l1 = 1.0  # wa, wb of L_con = wa L1 + wb (1 - SSIM)
    c.loss.w_ssim = 1.0
    c.loss.enc_norm = "l2"  # "l2" or "l1" distance of z and ẑ
    c.loss.w_focal = 1.0  # weight of the segmentator focal loss
    c.loss.focal_gamma = 2.0  # focal loss gamma
    c.loss.focal_alpha = -1.0  # focal loss alpha; < 0 disables class balancing
    # "target": FL(A, M*ROI) (default); "prediction": FL(A*ROI, M*ROI).
    c.loss.roi_mode = "target"

    # Adam, one per network, and the reduce-on-plateau schedule (docs/method.md §4).
    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.learning_rate = 1e-4
    c.optimizer.beta_1 = 0.5
    c.optimizer.beta_2 = 0.999
    # The plateau schedule always follows the validation total_loss (the paper's choice).
    c.optimizer.plateau_patience = 3
    c.optimizer.plateau_factor = math.exp(-0.1)
    c.optimizer.min_learning_rate = 1e-7

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 200
    c.train.batch_size = 8  # global batch, over all replicas
    c.train.steps_per_epoch = 0  # 0 = one pass over the training images
    c.train.strategy = "auto"  # "auto", "mirrored", "multi_worker" or "default"
    # multi_worker: seconds to wait for every worker of TF_CONFIG to start before failing
    # with an error naming them; 0 waits forever.
    c.train.worker_timeout_seconds = 600
    # Dtype policy of training (float32 variables in every case): "float32",
    # "mixed_bfloat16" (bfloat16 compute, no loss scaling; native on CPUs with AVX512_BF16)
    # or "mixed_float16" (float16 compute, dynamic loss scaling of all three optimizers).
    c.train.precision = "float32"
    # With several replicas, batch-norm moments over the global batch (all-reduced), so the
    # moving statistics kept in checkpoints and exports are those of one device on the same
    # batch; False keeps per-replica statistics. No effect on one device.
    c.train.sync_batch_norm = True
    # XLA: one device compiles the whole training step; several replicas compile each
    # replica's forward and backward passes, with the gradient all-reduce and the updates
    # around them (on CPU devices that needs sync_batch_norm=False). Slower on CPU
    # (docs/benchmarks.md); meant for GPUs.
    c.train.jit_compile = False
    c.train.checkpoint_every_steps = 200
    c.train.keep_checkpoints = 3
    c.train.log_every_steps = 20
    c.train.image_every_steps = 200
    c.train.deterministic = False
    # Which validation loss picks the best checkpoint (lower is better): "segmentator_loss"
    # (the focal loss of the anomaly maps on fixed-seed synthetic anomalies, what detection
    # depends on) or "total_loss" (L_gan + focal, dominated by the w2=50 reconstruction term).
    c.train.best_metric = "segmentator_loss"
    # Every N epochs, score the category's test split with the current weights and log
    # image/pixel AUROC and AUPRO (TensorBoard "test/...", history.json) for learning
    # curves; 0 = off. Logged only: checkpoint selection and the threshold never look at the
    # test split.
    c.train.eval_every_epochs = 0

    # Inference and scoring, docs/method.md §5.
    c.scoring = ml_collections.ConfigDict()
    # Average-pooling window of the anomaly map before the image score (its max). An odd k
    # uses k x k (1 = no smoothing). 0 (default) = automatic, by smoothing_auto:
    #   "validation": after training, the candidate with the best image AUROC on validation
    #     normals against synthetic anomalies (never the test split; grdnet_tf/calibration.py);
    #   "image_size": the paper's 21 at 256 px scaled to data.image_size (11 at 128 px).
    # The window chosen is stored in calibration.json and used by evaluation and export.
    c.scoring.smoothing_kernel = 0
    c.scoring.smoothing_auto = "validation"
    # Candidate windows for "validation", given at 256 px and scaled like the paper's 21.
    c.scoring.smoothing_candidates = (1, 5, 11, 21, 41, 61)
    c.scoring.calibration_repeats = 4  # synthetic draws per validation image for "validation"
    # Size of the calibration set's synthetic anomalies, as synthesis.mask_area_min / max
    # (fraction of the image, log-uniform): set it to the defects you expect, when they are
    # smaller than the training anomalies, so that the map sources and the window are chosen
    # on anomalies of that size. 0 (default) = the training synthesis' own sizes.
    c.scoring.calibration_mask_area_min = 0.0
    c.scoring.calibration_mask_area_max = 0.0
    # Which synthetic anomalies the calibration set draws (not in the paper):
    #   "training" (default): the training synthesis (Perlin blobs blended with textures);
    #   "defects": defect-like anomalies the networks never see in training: dark or bright
    #     spots, thin scratches and misplaced patches of the surface, 0.05-1 % of the image
    #     (or calibration_mask_area_min / max when set); grdnet_tf/data/defects.py. On the
    #     training family validation favours the segmentator, which learnt exactly that
    #     family; this one asks which maps and window find anomalies nobody trained on.
    c.scoring.calibration_anomalies = "training"
    # Which synthetic anomalies choose the pixel outputs' map (pixel_map "auto") and the
    # defect mask's pixel threshold: "same" (default) = calibration_anomalies; "training" or
    # "defects" = that family for the pixel choices only, while the image score's map,
    # window and baseline stay chosen on calibration_anomalies (two calibration sets, the
    # same clean normals; docs/method.md §5).
    c.scoring.pixel_calibration_anomalies = "same"
    c.scoring.threshold_quantile = 0.99  # quantile of validation-normal scores: the threshold
    # Pixel threshold of the defect mask (anomaly_mask = smoothed map > it). 0 (default) =
    # calibrated: the pixel F1-max of the smoothed maps of validation normals and synthetic
    # anomalies against their masks (grdnet_tf/calibration.py); a value in (0, 1) is used as is.
    c.scoring.pixel_threshold = 0.0
    # Which map the pixel outputs (anomaly_map, anomaly_mask, pixel metrics) and the image
    # score (max of the smoothed map) are taken from; not the paper's unless "segmentator":
    #   "segmentator" (default, the paper): the segmentator map A;
    #   "residual": R_n = clip(R / residual_scale, 0, 1), R = mean over channels of
    #     |X - X̂| (model input against its reconstruction), residual_scale = the 0.999
    #     quantile of R over the clean validation images' pixels (calibration.json);
    #   "sum": 0.5 * (A + R_n);
    #   "auto": chosen at calibration on validation normals and synthetic anomalies (never
    #     the test split): image_map jointly with the smoothing window by image AUROC,
    #     pixel_map by the pixel AUROC of the raw maps (as the pixel metrics are computed);
    #     ties go to "segmentator".
    # A run whose calibration.json has no choice scores with "segmentator".
    c.scoring.pixel_map = "segmentator"
    c.scoring.image_map = "segmentator"
    # What the image map is compared with before the smoothing and the max (the pixel
    # outputs and metrics are never changed; not in the paper):
    #   "none" (default, the paper): the map itself;
    #   "position": the map as a deviation from what normal images score at the same
    #     place, (map - mean) / max(std, median std), mean and std per pixel of the image
    #     map over the training images (normals) at calibration, std floored at its median
    #     over the image so that a place where normals never vary (the background) does not
    #     turn noise into a score. For fixed-camera lines, where every part sits in the same
    #     place and a highlight or an edge that is always bright would otherwise set every
    #     image's maximum (docs/method.md §5); whole-image mode only;
    #   "auto": "none" or "position", chosen at calibration jointly with image_map and the
    #     window by validation image AUROC (normals against synthetic anomalies, never the
    #     test split); ties go to "none".
    # The statistics live in the run folder (image_baseline-<hash>.npz, named in
    # calibration.json) and are baked into every export.
    c.scoring.image_baseline = "none"
    return c

def get_value(config, dotted):
    """The value of a dotted key, e.g. get_value(config, "model.attention")."""
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def with_overrides(config, overrides) -> ml_collections.FrozenConfigDict:
    """A frozen copy of `config` with dotted keys replaced, e.g. {"model.attention": "se"}.

    A string value is converted to the type of the field it replaces ("0.001" for a float,
    "true"/"false"/"1"/"0" for a bool), as in `--config.KEY=VALUE`; other values are set as
    given. Raises ValueError naming a key that is not a field or a value that does not
    convert.
    """
    # A deep copy: ConfigDict(frozen) hands out nested ConfigDicts that ml_collections
    # caches on the frozen config, so setting a field on them would leak into every later
    # copy of the same config.
    config = copy.deepcopy(ml_collections.ConfigDict(config))
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
        if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
            raise ValueError(f"config override {key}: no such config key"
                             + _did_you_mean(config, key))
        current = node[leaf]
        if isinstance(value, str) and not isinstance(current, str):
            if isinstance(current, tuple):
                value = _parse_tuple(key, value, current)
            elif isinstance(current, bool):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(f"config override {key}={value!r}: expected true or false")
                value = value.lower() in ("true", "1")
            elif isinstance(current, (int, float)):
                try:
                    value = type(current)(value)
                except ValueError:
                    raise ValueError(f"config override {key}={value!r}: expected "
                                     f"{type(current).__name__}") from None
            else:
                raise ValueError(f"config override {key}: only scalar fields can be set "
                                 f"from text")
        node[leaf] = value
    return freeze(config)


def _leaf_keys(config, prefix=""):
    for key, value in config.items():
        if isinstance(value, (ml_collections.ConfigDict, ml_collections.FrozenConfigDict)):
            yield from _leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def _did_you_mean(config, key):
    import difflib
    close = difflib.get_close_matches(key, list(_leaf_keys(config)), n=1, cutoff=0.75)
    return (f" (did you mean {close[0]}?)" if close else "") + \
        "; every key is documented in grdnet_tf/config.py"


def _parse_tuple(key, text, current):
    """'(64, 64)' or '64,64' -> a tuple of the element type of `current`."""
    import ast
    try:
        value = ast.literal_eval(text if text.strip().startswith("(") else f"({text},)")
    except (ValueError, SyntaxError):
        value = None
    if not isinstance(value, (tuple, list)):
        raise ValueError(f"config override {key}={text!r}: expected a tuple like "
                         f"{tuple(current)!r}")
    kind = type(current[0]) if current else None
    if kind in (int, float) and not all(isinstance(v, (int, float)) for v in value):
        raise ValueError(f"config override {key}={text!r}: expected numbers")
    return tuple(kind(v) for v in value) if kind in (int, float) else tuple(value)


def parse_overrides(items) -> dict:
    """{"KEY": "VALUE"} from "KEY=VALUE" strings (for `with_overrides`)."""
    parsed = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"config override {item!r}: expected KEY=VALUE")
        parsed[key] = value
    return parsed


def validate(config) -> None:
    """Raises ValueError naming the offending key and the allowed values."""
    for key, allowed in ALLOWED.items():
        choices.check(f"config {key}", get_value(config, key), allowed)
    for key in NON_NEGATIVE:
        value = get_value(config, key)
        if value < 0:
            raise ValueError(f"config {key}={value!r} must be >= 0")
    for key in POSITIVE_INT:
        choices.check_positive_int(f"config {key}", get_value(config, key))
    for key in UNIT_INTERVAL:
        value = get_value(config, key)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"config {key}={value!r} must lie in [0, 1]")
    for key in OPEN_UNIT_INTERVAL:
        choices.check_open_unit_interval(f"config {key}", get_value(config, key))
    if config.synthesis.beta_min > config.synthesis.beta_max:
        raise ValueError("config synthesis.beta_min must not exceed synthesis.beta_max")
    if not (0 <= config.synthesis.perlin_min_scale_log2 <= config.synthesis.perlin_max_scale_log2):
        raise ValueError("config synthesis.perlin_min_scale_log2 must be >= 0 and "
                         "<= synthesis.perlin_max_scale_log2")
    if not -1.0 < config.synthesis.perlin_threshold < 1.0:
        raise ValueError(f"config synthesis.perlin_threshold="
                         f"{config.synthesis.perlin_threshold!r} must lie in (-1, 1)")
    if config.synthesis.colour_field_min_cells > config.synthesis.colour_field_max_cells:
        raise ValueError("config synthesis.colour_field_min_cells must not exceed "
                         "synthesis.colour_field_max_cells")
    weights = [get_value(config, f"synthesis.texture_{name}_weight")
               for name in ("colour", "self", "perlin", "external", "builtin")]
    if sum(weights) <= 0:
        raise ValueError("config synthesis.texture_*_weight are all 0: the synthetic "
                         "anomalies have no texture source")
    ops = config.synthesis.texture_ops
    if int(ops) != ops or not 0 <= ops <= 10:
        raise ValueError(f"config synthesis.texture_ops={config.synthesis.texture_ops!r} must "
                         "be an integer in [0, 10]")
    if config.synthesis.mask_area_max > 0 and not (
            0 < config.synthesis.mask_area_min <= config.synthesis.mask_area_max <= 1):
        raise ValueError("config synthesis.mask_area_min and mask_area_max must satisfy "
                         "0 < mask_area_min <= mask_area_max <= 1 (mask_area_max=0 turns "
                         "the area rule off)")
    cal_min, cal_max = (config.scoring.calibration_mask_area_min,
                        config.scoring.calibration_mask_area_max)
    if (cal_min or cal_max) and not 0 < cal_min <= cal_max <= 1:
        raise ValueError(f"config scoring.calibration_mask_area_min={cal_min!r} and "
                         f"calibration_mask_area_max={cal_max!r} must both be 0 (the training "
                         "synthesis' sizes) or satisfy 0 < min <= max <= 1")
    size = tuple(config.data.image_size)
    if len(size) != 2 or any(int(s) != s or s < 1 for s in size):
        raise ValueError(f"config data.image_size={size!r} must be (height, width) positive ints")
    for key, levels in (("model.stages", config.model.stages),
                        ("model.disc_stages", config.model.disc_stages),
                        ("model.seg_depth", config.model.seg_depth)):
        factor = 2 ** levels
        if size[0] % factor or size[1] % factor:
            raise ValueError(f"config data.image_size={size} must be divisible by "
                             f"2**{key}={factor}")
    if not 0.0 < config.optimizer.learning_rate < math.inf:
        raise ValueError(f"config optimizer.learning_rate={config.optimizer.learning_rate!r} "
                         f"must be a finite number > 0")
    if not 0.0 < config.optimizer.plateau_factor <= 1.0:
        raise ValueError("config optimizer.plateau_factor must lie in (0, 1]")
    kernel = config.scoring.smoothing_kernel
    if int(kernel) != kernel or (kernel and kernel % 2 == 0):
        raise ValueError(f"config scoring.smoothing_kernel={kernel!r} must be 0 (automatic) "
                         f"or an odd positive integer")
    candidates = tuple(config.scoring.smoothing_candidates)
    if not candidates or any(int(k) != k or k < 1 for k in candidates):
        raise ValueError(f"config scoring.smoothing_candidates={candidates!r} must be "
                         f"positive integers")
    if config.data.roi_dir and config.data.roi_path:
        raise ValueError("config data.roi_dir and data.roi_path are both set: one ROI per "
                         "image (roi_dir) or one ROI for every image (roi_path)")
    if config.data.patch_stride and not config.data.patch_scale:
        raise ValueError("config data.patch_stride is set but data.patch_scale is 0 (patches "
                         "are off)")
    if config.scoring.get("image_baseline", "none") != "none" and config.data.patch_scale:
        raise ValueError(f"config scoring.image_baseline={config.scoring.image_baseline!r} "
                         "needs whole images (data.patch_scale=0): in patch mode a place in "
                         "the model input is not a place on the part")


def freeze(config) -> ml_collections.FrozenConfigDict:
    validate(config)
    return ml_collections.FrozenConfigDict(config)


def to_json(config) -> str:
    return json.dumps(ml_collections.ConfigDict(config).to_dict(), indent=2, sort_keys=True)


# Keys of older runs that are gone: {key: (value that may be dropped, why it is gone)}.
REMOVED_KEYS = {
    "scoring.tile_size": (0, "tiling at native resolution changed the magnification the "
                             "model trained at; use data.patch_scale (patch training and "
                             "tiled inference at one scale) and retrain"),
    "scoring.tile_stride": (0, "see data.patch_stride"),
}


# Keys of older runs whose values moved to a new key: {old key: (new key, {old: new value})}.
MOVED_KEYS = {
    "train.mixed_precision": ("train.precision", {False: "float32", True: "mixed_float16"}),
}


def from_dict(values) -> ml_collections.FrozenConfigDict:
    """Builds a frozen config from a plain dict, filling keys added since it was written.

    A removed key (`REMOVED_KEYS`) at its neutral value is dropped; any other value of it
    raises ValueError saying what replaced it. A moved key (`MOVED_KEYS`) sets its new key.
    """
    config = base_config()

    def merge(node, update, prefix):
        for key, value in update.items():
            if f"{prefix}{key}" in MOVED_KEYS:
                new_key, mapping = MOVED_KEYS[f"{prefix}{key}"]
                if value not in mapping:
                    raise ValueError(f"config key {prefix}{key}={value!r}: expected one of "
                                     f"{sorted(mapping)} (now {new_key})")
                section, name = new_key.split(".")
                config[section][name] = mapping[value]
                continue
            if f"{prefix}{key}" in REMOVED_KEYS:
                neutral, why = REMOVED_KEYS[f"{prefix}{key}"]
                if value != neutral:
                    raise ValueError(f"config key {prefix}{key}={value!r} no longer exists: "
                                     f"{why}")
                continue
            if key not in node:
                raise ValueError(f"unknown config key {prefix}{key}")
            if isinstance(value, dict):
                merge(node[key], value, f"{prefix}{key}.")
            else:
                node[key] = tuple(value) if isinstance(value, list) else value

    merge(config, values, "")
    return freeze(config)


def _package_configs_dir():
    """The folder of the named configs: the installed grdnet_tf.configs package, or in a
    checkout the top-level configs/ folder it is built from (setup.py package_dir)."""
    import importlib.util
    try:
        spec = importlib.util.find_spec("grdnet_tf.configs")
    except ImportError:
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return list(spec.submodule_search_locations)[0]
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "configs")


def config_names() -> list[str]:
    """Names of the shipped configs (``--config=NAME``), e.g. ['cpu_small', 'demo', ...]."""
    folder = _package_configs_dir()
    if not os.path.isdir(folder):
        return []
    return sorted(n[:-3] for n in os.listdir(folder)
                  if n.endswith(".py") and not n.startswith("_"))


def resolve_config_path(name_or_path) -> str:
    """A config file path from ``--config``: a shipped config's name (``cpu_small``, also
    ``configs/cpu_small.py`` from any folder) or the path of a file with ``get_config()``.

    An existing file wins over a name. Raises FileNotFoundError naming what was looked for.
    """
    if not name_or_path:
        raise ValueError("no config given: --config=NAME (" + ", ".join(config_names())
                         + ") or --config=path/to/config.py")
    if os.path.isfile(name_or_path):
        return name_or_path
    stem = os.path.splitext(os.path.basename(name_or_path))[0]
    shipped = os.path.join(_package_configs_dir(), f"{stem}.py")
    looks_named = (os.sep not in name_or_path.rstrip(os.sep)
                   or os.path.dirname(os.path.normpath(name_or_path)) == "configs")
    if looks_named and stem in config_names():
        return shipped
    raise FileNotFoundError(f"config file not found: {name_or_path} (a file with "
                            f"get_config(), or one of the named configs: "
                            f"{', '.join(config_names())})")


def load_config_file(path, overrides=None) -> ml_collections.FrozenConfigDict:
    """`get_config()` of a config file or named config (`resolve_config_path`), with
    dotted-key `overrides` ({"train.epochs": "5"}, see `with_overrides`), validated and
    frozen.

    Raises FileNotFoundError (no such file or name) or ValueError (the file fails to run or
    has no get_config(), an unknown key, a bad value), each naming the file or key.
    """
    import importlib.util
    path = resolve_config_path(path)
    spec = importlib.util.spec_from_file_location(
        f"grdnet_config_{os.path.splitext(os.path.basename(path))[0]}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        get_config = module.get_config
    except Exception as e:  # a user's file: report it on one line, whatever it raised
        raise ValueError(f"config file {path} failed to load: {type(e).__name__}: "
                         f"{e}") from e
    return with_overrides(get_config(), overrides or {})
