"""Every model config's ``validate()`` reports through coordtok.config's shared checks (``require``,
``positive``, ``divisible``): one message per mistake, word for word the same format in each config."""

import pytest

from baselines.magvit2 import MagvitV2Config
from baselines.promag import ProMAGConfig
from baselines.regen import RegenConfig
from coordtok.config import ConfigError, ModelConfig, divisible, positive, require


@pytest.mark.parametrize(
    "cls, over, message",
    [
        (ModelConfig, {"size": 60}, "'size' (60) is not divisible by 'enc_patch_xy' (16)"),
        (ModelConfig, {"dec_dim": 100}, "'dec_dim' (100) is not divisible by 'dec_heads' (8)"),
        (ModelConfig, {"cross_norm_eps": 0.0}, "'cross_norm_eps' must be positive, got 0.0"),
        (MagvitV2Config, {"latent_channels": 17}, "'latent_channels' (17) is not divisible by 'entropy_groups' (2)"),
        (MagvitV2Config, {"entropy_temperature": -1.0}, "'entropy_temperature' must be positive, got -1.0"),
        (ProMAGConfig, {"grown_levels": 9}, "'grown_levels' must be in [0, 3], got 9"),
        (ProMAGConfig, {"frames": 16}, "'frames' (16) must be 1 + a multiple of the temporal factor 4"),
        (RegenConfig, {"size": 250}, "'size' (250) is not divisible by 'patch' (16)"),
        (RegenConfig, {"hidden": 1000}, "'hidden' (1000) is not divisible by 'heads' (16)"),
        (RegenConfig, {"mlp_ratio": 0.0}, "'mlp_ratio' must be positive, got 0.0"),
    ],
)
def test_each_model_config_names_its_first_mistake(cls, over, message):
    cls().validate()  # the defaults (the paper's settings) pass
    with pytest.raises(ConfigError) as caught:
        cls(**over).validate()
    assert str(caught.value) == message


def test_the_shared_checks():
    require(True, "never raised")
    with pytest.raises(ConfigError, match="^the message$"):
        require(False, "the message")
    cfg = ModelConfig(size=128, enc_patch_xy=16)
    divisible(cfg, ("size", "enc_patch_xy"))
    with pytest.raises(ConfigError, match=r"^'enc_patch_xy' \(16\) is not divisible by 'size' \(128\)$"):
        divisible(cfg, ("size", "enc_patch_xy"), ("enc_patch_xy", "size"))  # every pair, in order
    with pytest.raises(ConfigError, match="^'size' must be positive, got 0$"):
        positive(ModelConfig(size=0), "frames", "size")
