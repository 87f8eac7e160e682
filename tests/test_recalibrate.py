"""grdnet-calibrate's library (grdnet_tf/training/recalibrate.py): a finished run calibrated
again on its own validation split reproduces the training's calibration exactly, takes
scoring.* overrides into calibration.json and config.json (the old files kept), and refuses
weight-shaping keys and other data without writing anything."""
import json
import os
import shutil

import pytest

from grdnet_tf import config as config_lib
from grdnet_tf import run_dir
from grdnet_tf.data import demo
from grdnet_tf.training import recalibrate


def _copy(tiny_run, tmp_path):
    model_dir = str(tmp_path / "run")
    shutil.copytree(tiny_run, model_dir)
    return model_dir


def _read(model_dir, name):
    with open(os.path.join(model_dir, name), encoding="utf-8") as f:
        return json.load(f)


def test_recalibrating_unchanged_reproduces_the_training_calibration(tiny_run, demo_category,
                                                                      tmp_path):
    model_dir = _copy(tiny_run, tmp_path)
    trained = _read(model_dir, run_dir.CALIBRATION_JSON)
    again = recalibrate.recalibrate(model_dir, demo_category, {})
    assert again["checkpoint"] == os.path.join(model_dir, "best",
                                               os.path.basename(trained["checkpoint"]))
    strip = lambda cal: {k: v for k, v in cal.items() if k != "checkpoint"}  # noqa: E731
    assert strip(json.loads(json.dumps(again))) == strip(trained)
    assert _read(model_dir, "calibration.previous.json") == trained
    assert _read(model_dir, "config.previous.json") == _read(tiny_run, run_dir.CONFIG_JSON)


def test_scoring_overrides_reach_calibration_and_config(tiny_run, demo_category, tmp_path):
    model_dir = _copy(tiny_run, tmp_path)
    trained = _read(model_dir, run_dir.CALIBRATION_JSON)
    lines = []
    new = recalibrate.recalibrate(model_dir, demo_category, {
        "scoring.threshold_quantile": "0.5", "scoring.calibration_mask_area_min": "0.01",
        "scoring.calibration_mask_area_max": "0.01"}, log_fn=lines.append)
    assert trained["quantile"] == 0.99 and new["quantile"] == 0.5
    # tiny_run has one validation normal: every quantile of its score is that score.
    assert new["threshold"] == trained["threshold"] == trained["score_max"]
    assert new["pixel_threshold"] != trained["pixel_threshold"]  # other synthetic anomalies
    assert any("(1-1 % of the image, scoring.calibration_mask_area_*)" in line
               for line in lines), lines
    run = run_dir.load_for_inference(model_dir)
    assert run.threshold == new["threshold"]
    assert run.config.scoring.threshold_quantile == 0.5
    assert run.config.scoring.calibration_mask_area_max == 0.01
    assert _read(model_dir, "calibration.previous.json") == trained
    assert _read(model_dir, "config.previous.json")["scoring"]["threshold_quantile"] == 0.99
    assert not [name for name in os.listdir(model_dir) if name.endswith(".tmp")]


def test_an_image_baseline_is_written_beside_calibration_json(tiny_run, demo_category,
                                                              tmp_path):
    """tiny_run trains with scoring.image_baseline=position: the training images'
    statistics are in a hashed .npz named in calibration.json, and the run scores with
    them. Recalibrating with "none" drops them from calibration.json; the file stays for
    calibration.previous.json."""
    model_dir = _copy(tiny_run, tmp_path)
    entry = _read(model_dir, run_dir.CALIBRATION_JSON)["image_baseline"]
    assert entry["file"].startswith("image_baseline-") and len(entry["sha256"]) == 64
    assert entry["num_images"] == _read(model_dir, run_dir.DATA_JSON)["train_images"]
    run = run_dir.load_for_inference(model_dir)
    assert run.calibration["image_baseline"]["mean"].shape == tuple(
        run.config.data.image_size)
    new = recalibrate.recalibrate(model_dir, demo_category,
                                  {"scoring.image_baseline": "none"})
    assert "image_baseline" not in new
    assert "image_baseline" not in _read(model_dir, run_dir.CALIBRATION_JSON)
    assert _read(model_dir, "calibration.previous.json")["image_baseline"] == entry
    assert os.path.isfile(os.path.join(model_dir, entry["file"]))
    assert run_dir.load_for_inference(model_dir).config.scoring.image_baseline == "none"


def test_refuses_weight_keys_bad_values_and_other_data_writing_nothing(tiny_run, demo_category,
                                                                         tmp_path):
    model_dir = _copy(tiny_run, tmp_path)
    before = {name: open(os.path.join(model_dir, name), "rb").read()
              for name in os.listdir(model_dir) if name.endswith(".json")}
    with pytest.raises(ValueError, match=r"config override model.stages: grdnet-calibrate "
                                         r"changes scoring.\* keys only"):
        recalibrate.recalibrate(model_dir, demo_category, {"model.stages": "3"})
    with pytest.raises(ValueError, match=r"scoring.threshold_quantile=1.5 must lie in"):
        recalibrate.recalibrate(model_dir, demo_category, {"scoring.threshold_quantile": "1.5"})
    other = demo.make_demo_dataset(str(tmp_path / "other"), seed=0, image_size=(64, 64),
                                   n_train=14, n_test_good=1, n_test_defect=1,
                                   n_test_outside=1, n_validation=0)
    with pytest.raises(ValueError, match=r"is not the data .* was trained on, so its "
                                         r"validation split is not the run's:\n  data "
                                         r"fingerprint: "):
        recalibrate.recalibrate(model_dir, other, {})
    with pytest.raises(FileNotFoundError, match="does not exist"):
        recalibrate.recalibrate(str(tmp_path / "missing"), demo_category, {})
    assert not os.path.exists(tmp_path / "missing")
    after = {name: open(os.path.join(model_dir, name), "rb").read()
             for name in os.listdir(model_dir) if name.endswith(".json")}
    assert after == before


def test_scoring_keys_may_change_on_resume():
    """Resuming a run with other scoring.* keys (what grdnet-calibrate writes into
    config.json) is the same run: those keys only shape the calibration after training."""
    base = config_lib.load_config_file("tiny")
    changed = config_lib.with_overrides(base, {"scoring.threshold_quantile": 0.5,
                                               "synthesis.anomaly_prob": 0.5})
    assert [key for key, _, _ in run_dir.config_differences(base, changed)] == [
        "synthesis.anomaly_prob"]
