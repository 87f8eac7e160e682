"""Dotted-key config overrides (config.with_overrides / parse_overrides)."""
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
