"""CoordTok-SiT: a Scalable Interpolant Transformer generating CoordTok triplane latents.

Modules:

* ``config``: the ``model:`` / ``train:`` / ``sample:`` sections of a SiT config;
* ``models``: :class:`TriplaneSiT` and its blocks;
* ``transport``: interpolant paths and the flow-matching training loss;
* ``samplers``: the registry of samplers (:data:`SAMPLERS`: Euler-Maruyama, Heun, ODE, ...);
* ``mixture``: Gaussian mixtures with a closed-form velocity (the samplers' ground truth);
* ``cache``: the latent cache ``coordtok encode`` writes, read back for training;
* ``stats``: per-plane, per-channel latent normalization statistics;
* ``encode``: ``coordtok encode`` (a tokenizer's triplanes -> latent cache);
* ``train``: ``coordtok sit-train`` (a :class:`coordtok.loop.Task`);
* ``sample``: ``coordtok sample`` (SiT samples decoded by the tokenizer into videos);
* ``checkpoint`` / ``reference``: loading this project's SiT checkpoints and the reference's;
* ``commands``: the ``encode``, ``sit-train`` and ``sample`` subcommands.

Only ``config``, ``models``, ``transport`` and ``samplers`` are imported here; the others on
demand (they pull in accelerate, safetensors, the tokenizer). The EMA helpers are the project's
one copy, :mod:`coordtok.ema`.
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
