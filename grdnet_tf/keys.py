"""Dictionary keys that cross module boundaries, defined once.

Training elements (from ``grdnet_tf.data``) carry IMAGE, PERTURBED, MASK and ROI;
``GRDNet.call`` returns RECONSTRUCTION and RAW_ANOMALY_MAP; scored outputs (from
``grdnet_tf.scoring``, also the SavedModel's output names) carry RECONSTRUCTION, ANOMALY_MAP,
ANOMALY_SCORE, IS_ANOMALOUS, ANOMALY_MASK and NORMALIZED_SCORE.
"""

IMAGE = "image"                  # X: clean normal image, float32 [B, H, W, C] in [0, 1]
PERTURBED = "perturbed"          # X_n: image with a synthetic anomaly, like IMAGE
MASK = "mask"                    # M: binary anomaly mask, float32 [B, H, W, 1]
ROI = "roi"                      # region of interest, float32 [B, H, W, 1] in {0, 1}
LABEL = "label"                  # 0 good / 1 anomalous (evaluation)
PATH = "path"                    # source file path (evaluation)
DEFECT = "defect"                # defect type folder name (evaluation)

RECONSTRUCTION = "reconstruction"  # X̂, like IMAGE
RAW_ANOMALY_MAP = "raw_anomaly_map"  # segmentator output A, float32 [B, H, W] in [0, 1]
ANOMALY_MAP = "anomaly_map"        # A after ROI masking and smoothing (scoring), like A
ANOMALY_SCORE = "anomaly_score"    # image score, float32 [B]
IS_ANOMALOUS = "is_anomalous"      # bool [B]
ANOMALY_MASK = "anomaly_mask"      # uint8 [B, h, w] in {0, 1}: ANOMALY_MAP > pixel threshold
NORMALIZED_SCORE = "normalized_score"  # float32 [B] in [0, 1], image threshold at 0.5
