"""CoordTok: coordinate-based long-video tokenization (see README.md)."""

from .config import ConfigError, ModelConfig
from .model import CoordTok
from .triplane import Triplane

__all__ = ["CoordTok", "ConfigError", "ModelConfig", "Triplane"]
__version__ = "0.1.0"
