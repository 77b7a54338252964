"""I3D feature detectors for FVD: the two Kinetics-400 I3D models in use in the literature.

Both take uint8 videos ``(B, T, H, W, 3)`` (numpy or torch, RGB, 0..255) through one interface,
:class:`Detector`, and return one 400-d float64 feature row per video::

    det = load_torchscript_i3d()            # StyleGAN-V protocol (the paper's generation FVD)
    det = load_i3d_pretrained()             # VideoGPT / PVDM / CoordTok reference rFVD
    feats = det.features(videos_uint8)      # (B, 400) float64 numpy

* StyleGAN-V's TorchScript I3D (``i3d_torchscript.pt``, :class:`TorchScriptI3D`), called as
  StyleGAN-V calls it: ``detector(x, rescale=True, resize=True, return_features=True)`` on uint8
  ``(B, 3, T, H, W)``; the 400-d pre-softmax output.
* VideoGPT / PVDM's InceptionI3d (``i3d_pretrained_400.pt``, :class:`InceptionI3d`, the same
  module names, so the released state dict loads strictly) with their preprocessing (frames / 255,
  short side bilinearly to 224, center crop, [-1, 1]); the 400-d logits averaged over time.

The protocols in detail, with where each convention comes from: README.md, "FVD detectors".
**Weights** are never downloaded. Each loader takes a file or a folder; without one it looks in
``$COORDTOK_I3D_DIR``, else ``~/.cache/coordtok/i3d/``. A missing file raises
:class:`DetectorWeightsMissing` whose one-line message names the expected file, where it was
looked for and where the file comes from.
"""

from __future__ import annotations

import abc
import hashlib
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from coordtok.errors import CoordTokError

I3D_TORCHSCRIPT_FILE = "i3d_torchscript.pt"
I3D_PRETRAINED_FILE = "i3d_pretrained_400.pt"
NUM_CLASSES = 400
I3D_SIZE = 224
# Three temporal stride-2 stages leave ceil(T / 8) steps and the final average pool spans 2 of
# them, so InceptionI3d needs at least 9 frames (16 is the usual minimum in the literature).
I3D_MIN_FRAMES = 9

# Where the files come from: text for error messages only; nothing here downloads.
WEIGHT_SOURCES = {
    I3D_TORCHSCRIPT_FILE: "StyleGAN-V's detector, https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt "
    "(see universome/stylegan-v src/metrics/frechet_video_distance.py)",
    I3D_PRETRAINED_FILE: "VideoGPT/PVDM's InceptionI3d weights, Google Drive file id "
    "1fBNl3TS0LA5FEhZv5nMGJs2_7qQmvTmh (see evals/fvd/download.py in PVDM or CoordTok)",
}


class DetectorWeightsMissing(CoordTokError, FileNotFoundError):
    """The detector's weight file is not where it was looked for (message: one line)."""


class DetectorWeightsError(CoordTokError, RuntimeError):
    """The weight file exists but cannot be used (unreadable, or the wrong network)."""


# ---------------------------------------------------------------------------- weight discovery
def default_weights_dir() -> Path:
    """``$COORDTOK_I3D_DIR`` if set, else ``~/.cache/coordtok/i3d``."""
    env = os.environ.get("COORDTOK_I3D_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "coordtok" / "i3d"


def find_weights(file_name: str, path_or_dir=None) -> Path:
    """Resolve a weight file: ``path_or_dir`` (a file, or a folder holding ``file_name``), else
    ``default_weights_dir() / file_name``. Raises :class:`DetectorWeightsMissing` otherwise."""
    if path_or_dir is not None:
        p = Path(path_or_dir).expanduser()
        # A folder, or a path without a suffix that does not exist yet, names the folder to look in.
        path = p / file_name if p.is_dir() or (not p.exists() and not p.suffix) else p
        where = "the given path"
    else:
        path = default_weights_dir() / file_name
        where = "$COORDTOK_I3D_DIR" if os.environ.get("COORDTOK_I3D_DIR") else "the default cache folder"
    if not path.is_file():
        raise DetectorWeightsMissing(
            f"I3D weights not found: expected {file_name} at {path} ({where}); pass the file or its folder "
            f"(--detector-path), or put it in $COORDTOK_I3D_DIR or ~/.cache/coordtok/i3d/. {file_name} is "
            f"{WEIGHT_SOURCES.get(file_name, 'not a file we know')}; nothing is downloaded automatically."
        )
    return path


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _default_device(device) -> torch.device:
    return torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))


# ---------------------------------------------------------------------------- the common interface
def as_uint8_videos(videos) -> torch.Tensor:
    """uint8 ``(B, T, H, W, 3)`` numpy/torch (or float in [0, 1], rounded to 0..255) -> uint8
    torch ``(B, T, H, W, 3)`` on the CPU."""
    if not isinstance(videos, torch.Tensor):
        videos = np.asarray(videos)
        # torch cannot wrap read-only arrays (np.broadcast_to, some memory maps) safely.
        videos = torch.from_numpy(videos if videos.flags.writeable else videos.copy())
    x = videos
    if x.ndim != 5 or x.shape[-1] != 3:
        raise ValueError(f"expected videos (B, T, H, W, 3), got {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        if x.is_floating_point():
            x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
        else:
            raise ValueError(f"expected uint8 videos (or float in [0, 1]), got {x.dtype}")
    return x.cpu()


class Detector(abc.ABC):
    """A video feature extractor for FVD.

    ``features(videos)``: uint8 ``(B, T, H, W, 3)`` numpy or torch (0..255, RGB) -> ``(B, 400)``
    float64 numpy. ``name`` names the model (it keys cached statistics, together with
    ``weights_sha1``, the hash of the weight file).
    """

    name: str = "detector"
    feature_dim: int = NUM_CLASSES
    weights_path: Path | None = None
    weights_sha1: str | None = None

    @abc.abstractmethod
    def features(self, videos) -> np.ndarray:
        """uint8 ``(B, T, H, W, 3)`` -> ``(B, feature_dim)`` float64."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, weights={self.weights_path})"


# ---------------------------------------------------------------------------- StyleGAN-V TorchScript
class TorchScriptI3D(Detector):
    """StyleGAN-V's TorchScript I3D, called with its calling convention (module docstring)."""

    name = "stylegan-i3d"
    # StyleGAN-V's detector_kwargs for FVD: uint8 input, scaling and resizing done inside.
    DETECTOR_KWARGS = dict(rescale=True, resize=True, return_features=True)

    def __init__(self, module: torch.jit.ScriptModule, device=None, weights_path=None, weights_sha1=None):
        self.device = _default_device(device)
        self.module = module.eval().to(self.device)
        self.weights_path, self.weights_sha1 = weights_path, weights_sha1

    @torch.no_grad()
    def features(self, videos) -> np.ndarray:
        x = rearrange(as_uint8_videos(videos), "b t h w c -> b c t h w").contiguous().to(self.device)
        feats = self.module(x, **self.DETECTOR_KWARGS)
        if feats.ndim != 2 or feats.shape[0] != x.shape[0]:
            raise DetectorWeightsError(
                f"{self.weights_path}: the TorchScript detector returned shape {tuple(feats.shape)}, "
                f"expected ({x.shape[0]}, D); is it StyleGAN-V's {I3D_TORCHSCRIPT_FILE}?"
            )
        return feats.double().cpu().numpy()


def load_torchscript_i3d(path_or_dir=None, device=None) -> TorchScriptI3D:
    """StyleGAN-V's ``i3d_torchscript.pt`` from a file, a folder or the cache (module docstring)."""
    path = find_weights(I3D_TORCHSCRIPT_FILE, path_or_dir)
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated in torch, but it is this file's format
            warnings.simplefilter("ignore", DeprecationWarning)
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # TorchScript raises RuntimeError / ValueError / zipfile errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DetectorWeightsError(f"{path}: not a loadable TorchScript detector ({first})") from e
    return TorchScriptI3D(module, device=device, weights_path=path, weights_sha1=_sha1(path))


# ---------------------------------------------------------------------------- InceptionI3d
def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding of one axis: (front, back), the extra pixel at the back."""
    total = max(kernel - (stride if size % stride == 0 else size % stride), 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel, stride) -> torch.Tensor:
    """Zero-pad ``(B, C, T, H, W)`` so a (kernel, stride) window gives ceil(size / stride) outputs."""
    pads = [_same_pad(s, k, st) for s, k, st in zip(x.shape[2:], kernel, stride)]
    (tf, tb), (hf, hb), (wf, wb) = pads
    return F.pad(x, (wf, wb, hf, hb, tf, tb))


class Unit3D(nn.Module):
    """Conv3d ('SAME' padding, computed per input) -> BatchNorm -> ReLU, as in the I3D papers' code.

    Module names ``conv3d`` and ``bn`` match the released state dict.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel=(1, 1, 1),
        stride=(1, 1, 1),
        batch_norm: bool = True,
        bias: bool = False,
        relu: bool = True,
    ):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, padding=0, bias=bias)
        # eps / momentum as in pytorch_i3d.py (the weights were converted with these).
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-5, momentum=0.001) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    """Max pooling with 'SAME' zero padding. Zeros rather than -inf as in the reference: every
    pooled input follows a ReLU, so the two agree."""

    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches concatenated on channels: 1x1 | 1x1 -> 3x3x3 | 1x1 -> 3x3x3 | pool -> 1x1.

    ``widths = (b0, b1a, b1b, b2a, b2b, b3b)`` output channels; output has b0 + b1b + b2b + b3b.
    """

    def __init__(self, in_channels: int, widths):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3b = widths
        self.b0 = Unit3D(in_channels, w0)
        self.b1a = Unit3D(in_channels, w1a)
        self.b1b = Unit3D(w1a, w1b, kernel=(3, 3, 3))
        self.b2a = Unit3D(in_channels, w2a)
        self.b2b = Unit3D(w2a, w2b, kernel=(3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, w3b)
        self.out_channels = w0 + w1b + w2b + w3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


# (in_channels, widths) of each Inception block; the names are the released state dict's prefixes.
_INCEPTION_WIDTHS = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


class InceptionI3d(nn.Module):
    """Inception-v1 I3D (Carreira & Zisserman 2017), the VideoGPT/PVDM ``pytorch_i3d.py`` network.

    ``forward(x)``: ``(B, 3, T, 224, 224)`` float in [-1, 1] (see :func:`i3d_preprocess`),
    T >= 9 -> ``(B, num_classes)`` logits averaged over time (no softmax). Spatially the network
    is built for 224x224: the final 7x7 average pool must see a 7x7 map.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, in_channels: int = 3):
        super().__init__()
        stages: list[tuple[str, nn.Module]] = [
            ("Conv3d_1a_7x7", Unit3D(in_channels, 64, kernel=(7, 7, 7), stride=(2, 2, 2))),
            ("MaxPool3d_2a_3x3", MaxPool3dSame((1, 3, 3), (1, 2, 2))),
            ("Conv3d_2b_1x1", Unit3D(64, 64)),
            ("Conv3d_2c_3x3", Unit3D(64, 192, kernel=(3, 3, 3))),
            ("MaxPool3d_3a_3x3", MaxPool3dSame((1, 3, 3), (1, 2, 2))),
        ]
        for name in ("Mixed_3b", "Mixed_3c"):
            stages.append((name, InceptionModule(*_INCEPTION_WIDTHS[name])))
        stages.append(("MaxPool3d_4a_3x3", MaxPool3dSame((3, 3, 3), (2, 2, 2))))
        for name in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"):
            stages.append((name, InceptionModule(*_INCEPTION_WIDTHS[name])))
        stages.append(("MaxPool3d_5a_2x2", MaxPool3dSame((2, 2, 2), (2, 2, 2))))
        for name in ("Mixed_5b", "Mixed_5c"):
            stages.append((name, InceptionModule(*_INCEPTION_WIDTHS[name])))
        for name, module in stages:
            self.add_module(name, module)
        self.stage_names = tuple(name for name, _ in stages)
        self.avg_pool = nn.AvgPool3d(kernel_size=(2, 7, 7), stride=(1, 1, 1))
        # Inactive in eval(); kept so the module tree matches the reference (its p=0.5 comes from
        # passing a keep-probability to nn.Dropout).
        self.dropout = nn.Dropout(0.5)
        self.logits = Unit3D(1024, num_classes, batch_norm=False, bias=True, relu=False)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, T, 224, 224)`` -> the 1024-d pool ``(B, 1024, ceil(T / 8) - 1, 1, 1)``."""
        if x.ndim != 5 or x.shape[1] != 3 or x.shape[2] < I3D_MIN_FRAMES or x.shape[-2:] != (I3D_SIZE, I3D_SIZE):
            raise ValueError(
                f"InceptionI3d expects (B, 3, T >= {I3D_MIN_FRAMES}, {I3D_SIZE}, {I3D_SIZE}), got {tuple(x.shape)}"
            )
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.avg_pool(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.logits(self.dropout(self.pool(x)))
        return logits.mean(dim=(2, 3, 4))  # spatial is 1x1; the mean over time is get_fvd_logits'


def i3d_preprocess(videos, size: int = I3D_SIZE) -> torch.Tensor:
    """VideoGPT/PVDM input transform: uint8 ``(B, T, H, W, 3)`` (or float in [0, 1]) ->
    float32 ``(B, 3, T, size, size)`` in [-1, 1].

    Frames / 255, short side bilinearly resized to ``size`` (long side ``ceil``-ed, no
    antialiasing), center crop, ``(x - 0.5) * 2``; one video at a time to bound memory.
    """
    videos = as_uint8_videos(videos)
    out = []
    for video in videos:
        x = rearrange(video, "t h w c -> t c h w").float() / 255
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        target = (size, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), size)
        x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
        top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
        x = x[:, :, top : top + size, left : left + size]
        out.append(rearrange((x - 0.5) * 2, "t c h w -> c t h w"))
    return torch.stack(out)


class PretrainedI3D(Detector):
    """:class:`InceptionI3d` with VideoGPT/PVDM's preprocessing; features = time-averaged logits."""

    name = "videogpt-i3d"

    def __init__(self, model: InceptionI3d, device=None, weights_path=None, weights_sha1=None):
        self.device = _default_device(device)
        self.model = model.eval().to(self.device)
        self.weights_path, self.weights_sha1 = weights_path, weights_sha1

    @torch.no_grad()
    def features(self, videos) -> np.ndarray:
        x = i3d_preprocess(videos).to(self.device)
        return self.model(x).double().cpu().numpy()


def load_i3d_pretrained(path_or_dir=None, device=None) -> PretrainedI3D:
    """VideoGPT/PVDM's ``i3d_pretrained_400.pt`` (a state dict) loaded strictly into
    :class:`InceptionI3d`, from a file, a folder or the cache (module docstring)."""
    path = find_weights(I3D_PRETRAINED_FILE, path_or_dir)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip errors of every kind
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DetectorWeightsError(f"{path}: unreadable I3D weights ({first})") from e
    if not isinstance(state, dict):
        raise DetectorWeightsError(f"{path}: expected an InceptionI3d state dict, got {type(state).__name__}")
    model = InceptionI3d(NUM_CLASSES)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        # num_batches_tracked may be absent from old files; BatchNorm fills it in itself.
        missing = sorted(k for k in set(model.state_dict()) - set(state) if not k.endswith("num_batches_tracked"))
        unexpected = sorted(set(state) - set(model.state_dict()))
        raise DetectorWeightsError(
            f"{path}: not VideoGPT's InceptionI3d weights ({len(missing)} missing keys, e.g. {missing[:2]}, "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:2]}, or mismatched shapes)"
        ) from e
    return PretrainedI3D(model, device=device, weights_path=path, weights_sha1=_sha1(path))


DETECTORS = {"stylegan": load_torchscript_i3d, "videogpt": load_i3d_pretrained}


def load_detector(kind: str, path_or_dir=None, device=None) -> Detector:
    """``kind``: ``"stylegan"`` (TorchScript, the paper's generation FVD) or ``"videogpt"``."""
    if kind not in DETECTORS:
        raise ValueError(f"unknown detector {kind!r}; expected one of {sorted(DETECTORS)}")
    return DETECTORS[kind](path_or_dir, device=device)
