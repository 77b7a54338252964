"""CoordTok-SiT: a Scalable Interpolant Transformer generating CoordTok triplane latents."""
from .ema import create_ema, update_ema
from .models import (
    FinalLayer,
    LabelEmbedder,
    SampleConfig,
    SiTBlock,
    SiTConfig,
    SiTTrainConfig,
    TimestepEmbedder,
    TriplaneSiT,
    load_sit_configs,
)
from .samplers import SAMPLERS, euler_maruyama, heun_sde, ode
from .transport import AffinePath, GVPPath, LinearPath, make_path, training_loss

__all__ = [
    "AffinePath",
    "FinalLayer",
    "GVPPath",
    "LabelEmbedder",
    "LinearPath",
    "SAMPLERS",
    "SampleConfig",
    "SiTBlock",
    "SiTConfig",
    "SiTTrainConfig",
    "TimestepEmbedder",
    "TriplaneSiT",
    "create_ema",
    "euler_maruyama",
    "heun_sde",
    "load_sit_configs",
    "make_path",
    "ode",
    "training_loss",
    "update_ema",
]
