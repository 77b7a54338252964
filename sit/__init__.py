"""CoordTok-SiT: a Scalable Interpolant Transformer generating CoordTok triplane latents.

Modules: ``config`` (YAML sections), ``models`` (TriplaneSiT), ``transport`` / ``samplers`` (flow
matching, Euler-Maruyama, ODE), ``ema``, ``latents`` (latent cache + normalization statistics),
``train`` (``coordtok sit-train``), ``sample`` (``coordtok sample``). The last three are imported
on demand (they pull in accelerate, safetensors, the tokenizer).
"""
from coordtok.ema import create_ema, update_ema

from .config import SampleConfig, SiTConfig, SiTRunConfig, SiTTrainConfig, load_sit_configs, load_sit_run_config
from .models import FinalLayer, LabelEmbedder, SiTBlock, TimestepEmbedder, TriplaneSiT
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
    "SiTRunConfig",
    "SiTTrainConfig",
    "TimestepEmbedder",
    "TriplaneSiT",
    "create_ema",
    "euler_maruyama",
    "heun_sde",
    "load_sit_configs",
    "load_sit_run_config",
    "make_path",
    "ode",
    "training_loss",
    "update_ema",
]
