"""Dotted-key config overrides (config.with_overrides / parse_overrides)."""
import subprocess
import sys

import pytest

from grdnet_tf import config as config_lib


def test_text_values_take_the_type_of_the_field():
    base = config_lib.freeze(config_lib.base_config())
    config = config_lib.with_overrides(base, config_lib.parse_overrides(
        ["model.attention=cbam", "optimizer.learning_rate=0.001", "train.epochs=7",
         "data.use_roi=false"]))
    assert config.model.attention == "cbam"
    assert config.optimizer.learning_rate == 0.001
    assert config.train.epochs == 7 and isinstance(config.train.epochs, int)
    assert config.data.use_roi is False
    assert config_lib.get_value(config, "train.epochs") == 7
    # A copy: the base config is untouched and the result is frozen.
    assert base.model.attention == "none" and base.train.epochs != 7
    with pytest.raises(AttributeError):
        config.train.epochs = 8


def test_typed_values_are_set_as_given():
    config = config_lib.with_overrides(config_lib.base_config(),
                                       {"optimizer.learning_rate": 5e-4, "data.use_roi": True})
    assert config.optimizer.learning_rate == 5e-4 and config.data.use_roi is True


@pytest.mark.parametrize("overrides,message", [
    ({"model.atention": "se"}, "model.atention: no such config key"),
    ({"nosection.epochs": "1"}, "nosection.epochs: no such config key"),
    ({"train.epochs": "ten"}, "train.epochs='ten': expected int"),
    ({"data.use_roi": "maybe"}, "data.use_roi='maybe': expected true or false"),
])
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        config_lib.with_overrides(config_lib.base_config(), overrides)


def test_parse_overrides_requires_key_and_value():
    assert config_lib.parse_overrides(["a.b=c=d"]) == {"a.b": "c=d"}
    with pytest.raises(ValueError, match="'model.attention': expected KEY=VALUE"):
        config_lib.parse_overrides(["model.attention"])


@pytest.mark.parametrize("overrides,message", [
    # These passed freeze() and failed only when the dataset was built.
    ({"synthesis.perlin_threshold": 1.0}, r"synthesis.perlin_threshold=1.0 must lie in \(-1, 1\)"),
    ({"synthesis.colour_field_min_cells": 0}, r"synthesis.colour_field_min_cells=0 must be a "
                                              r"positive integer"),
    ({"synthesis.colour_field_min_cells": 9}, r"synthesis.colour_field_min_cells must not "
                                              r"exceed synthesis.colour_field_max_cells"),
    ({"synthesis.colour_smooth_prob": 1.5}, r"synthesis.colour_smooth_prob=1.5 must lie in"),
    ({"synthesis.perlin_rotation_deg": -1.0}, r"synthesis.perlin_rotation_deg=-1.0 must be >= 0"),
    ({f"synthesis.texture_{n}_weight": 0.0 for n in ("colour", "self", "perlin", "external")},
     r"synthesis.texture_\*_weight are all 0"),
    ({"model.seg_output_prior": 0.0}, r"model.seg_output_prior=0.0 must lie in \(0, 1\)"),
    ({"model.seg_output_prior": 1.0}, r"model.seg_output_prior=1.0 must lie in \(0, 1\)"),
    ({"scoring.calibration_mask_area_min": 0.001},
     r"scoring.calibration_mask_area_min=0.001 and calibration_mask_area_max=0.0 must"),
    ({"scoring.calibration_mask_area_min": 0.02, "scoring.calibration_mask_area_max": 0.01},
     r"scoring.calibration_mask_area_min=0.02 and calibration_mask_area_max=0.01 must"),
])
def test_validate_checks_what_the_data_pipeline_needs(overrides, message):
    with pytest.raises(ValueError, match=message):
        config_lib.with_overrides(config_lib.base_config(), overrides)


def test_every_choice_comes_from_the_choices_module():
    from grdnet_tf import choices
    for key, allowed in config_lib.ALLOWED.items():
        assert allowed in vars(choices).values(), key
        assert config_lib.get_value(config_lib.base_config(), key) in allowed
    with pytest.raises(ValueError, match=r"config model.norm='layer' is not allowed; choose "
                                         r"one of \('batch', 'group', 'instance', 'none'\)"):
        config_lib.with_overrides(config_lib.base_config(), {"model.norm": "layer"})


def test_config_and_choices_import_without_tensorflow():
    code = ("import sys, grdnet_tf.config, grdnet_tf.choices; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_named_configs_and_paths(tmp_path, monkeypatch):
    """--config takes a shipped config's name (also as configs/NAME.py from any folder) or
    a file path; errors name the file or key in one line."""
    assert config_lib.config_names() == ["cpu_small", "demo", "paper", "tiny"]
    monkeypatch.chdir(tmp_path)
    small = config_lib.load_config_file("cpu_small")
    assert small.data.image_size == (128, 128) and small.model.stages == 4
    assert config_lib.load_config_file("configs/cpu_small.py") == small
    mine = tmp_path / "mine.py"
    mine.write_text("from grdnet_tf.config import base_config\n"
                    "def get_config():\n    c = base_config()\n    c.train.epochs = 3\n"
                    "    return c\n")
    config = config_lib.load_config_file(str(mine), {"data.image_size": "64,64",
                                                     "train.batch_size": "4"})
    assert (config.train.epochs, config.data.image_size, config.train.batch_size) == \
        (3, (64, 64), 4)
    with pytest.raises(FileNotFoundError, match=r"config file not found: nope.py \(a file "
                                                r"with get_config\(\), or one of the named "
                                                r"configs: cpu_small, demo, paper, tiny\)"):
        config_lib.load_config_file("nope.py")
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(:\n")
    with pytest.raises(ValueError, match=r"config file .*broken.py failed to load: "
                                         r"SyntaxError"):
        config_lib.load_config_file(str(broken))
    with pytest.raises(ValueError, match=r"train.epoch: no such config key \(did you mean "
                                         r"train.epochs\?\)"):
        config_lib.load_config_file("tiny", {"train.epoch": "1"})


def test_overrides_do_not_leak_into_later_copies():
    """with_overrides(base, a) then with_overrides(base, b) must not carry a into b
    (ml_collections caches the nested ConfigDicts of a frozen config)."""
    base = config_lib.freeze(config_lib.base_config())
    first = config_lib.with_overrides(base, {"synthesis.beta_min": 0.2})
    second = config_lib.with_overrides(base, {"synthesis.beta_max": 0.9})
    assert first.synthesis.beta_min == 0.2 and first.synthesis.beta_max == 1.0
    assert second.synthesis.beta_min == 0.5 and second.synthesis.beta_max == 0.9
    assert base.synthesis.beta_min == 0.5 and base.synthesis.beta_max == 1.0
