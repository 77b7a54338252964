"""LPIPS (v0.1, VGG16 trunk) in plain PyTorch, without torchvision.

LPIPS (Zhang et al., 2018) compares two images through a frozen ImageNet VGG16: the
activations after relu1_2, relu2_2, relu3_3, relu4_3 and relu5_3 are unit-normalised across
channels, their squared difference is weighted per channel by a calibrated 1x1 "lin" head,
averaged over space and summed over the five taps. This module reproduces the ``lpips``
package (``LPIPS(net="vgg", version="0.1", spatial=False)``) number for number, but

* the VGG16 ``features`` stack is rebuilt here with torchvision's module indices, so the
  standard torchvision file ``vgg16-397923af.pth`` loads into it key for key -- torchvision
  itself is broken on CPU-only installs and is never imported;
* the calibrated lin heads are read from the installed ``lpips`` package's folder
  (``weights/v0.1/vgg.pth``) without importing the package (it imports torchvision);
* nothing is ever downloaded: a missing file is an error that says where to put it.

Weights: VGG16 from an explicit path, else ``$COORDTOK_VGG16``, else the torch hub cache
``<torch.hub.get_dir()>/checkpoints/vgg16-397923af.pth`` (where torchvision would cache it).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .errors import CoordTokError

VGG16_FILENAME = "vgg16-397923af.pth"
VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILENAME}"
VGG16_ENV = "COORDTOK_VGG16"
LIN_RELPATH = Path("weights") / "v0.1" / "vgg.pth"

# torchvision's VGG16 configuration "D": conv widths, "M" = 2x2 max-pool.
_VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
# Indices in ``features`` of the ReLUs LPIPS taps: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
VGG16_TAPS = (3, 8, 15, 22, 29)
TAP_CHANNELS = (64, 128, 256, 512, 512)

# LPIPS v0.1 input scaling: [-1, 1] images -> (x - shift) / scale, i.e. the ImageNet
# mean/std normalisation re-expressed for [-1, 1] input (values copied from the lpips package).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10


class LPIPSWeightsError(CoordTokError, ValueError):
    """A weight file exists but does not hold what it should (unexpected key, wrong shape)."""


class LPIPSWeightsMissing(CoordTokError, FileNotFoundError):
    """A weight file LPIPS needs is not on disk; the message says where to put it."""


# ---------------------------------------------------------------------------- VGG16 trunk
class VGG16Features(nn.Module):
    """torchvision's ``vgg16().features`` with the same module indices and state-dict keys.

    ``features.{0,2,5,7,10,12,14,17,19,21,24,26,28}`` are the 13 3x3 convs (26 tensors in the
    state dict); max-pools sit at indices 4, 9, 16, 23, 30 like torchvision's, so
    ``vgg16-397923af.pth`` loads directly (minus its ``classifier.*``).

    forward: ``(N, 3, H, W)`` ImageNet-normalised images -> list of the 5 tap activations
    ``(N, C_k, H / 2^k, W / 2^k)``, C = 64, 128, 256, 512, 512 (k = 0..4), all >= 0 (post-ReLU).
    """

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in _VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                # inplace=False: the tapped activation must not be overwritten by a later op.
                layers += [nn.Conv2d(in_ch, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                in_ch = v
        self.features = nn.Sequential(*layers)
        self.reset_parameters()

    def reset_parameters(self):
        # torchvision's VGG init, so a randomly initialised trunk (tests, ablations) keeps
        # well-scaled activations through all 13 convs.
        for m in self.features:
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in VGG16_TAPS:
                taps.append(x)
                if i == VGG16_TAPS[-1]:
                    break  # the final pool feeds only the classifier
        return taps


# ---------------------------------------------------------------------------- weight files
def find_vgg16_weights(path: str | os.PathLike | None = None) -> Path:
    """Locate ``vgg16-397923af.pth``: ``path``, else ``$COORDTOK_VGG16``, else the hub cache.

    An explicit path or environment variable that names a missing file is an error (rather
    than silently falling back), so a typo is reported instead of loading some other file.
    Never downloads; raises :class:`LPIPSWeightsMissing` with where to put the file.
    """
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise LPIPSWeightsMissing(f"VGG16 weights for LPIPS not found at {path} (download {VGG16_URL})")
        return path
    env = os.environ.get(VGG16_ENV)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise LPIPSWeightsMissing(
                f"VGG16 weights for LPIPS not found at {path} (set by ${VGG16_ENV}; download {VGG16_URL})"
            )
        return path
    path = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME
    if not path.is_file():
        raise LPIPSWeightsMissing(
            f"VGG16 weights for LPIPS not found: download {VGG16_URL} and put it at {path} "
            f"(or pass its path / set ${VGG16_ENV}); nothing is downloaded automatically"
        )
    return path


def find_lin_weights(lin_path: str | os.PathLike | None = None) -> Path:
    """Locate the calibrated LPIPS v0.1 VGG lin heads: ``lin_path``, else the lpips package's
    ``weights/v0.1/vgg.pth`` (found with ``importlib.util.find_spec``, never imported)."""
    if lin_path is not None:
        lin_path = Path(lin_path).expanduser()
        if not lin_path.is_file():
            raise LPIPSWeightsMissing(f"LPIPS lin-head weights not found at {lin_path}")
        return lin_path
    package_dir = _lpips_package_dir()
    hint = "install them with `pip install --no-deps lpips` (only its weight files are used) or pass lin_path"
    if package_dir is None:
        raise LPIPSWeightsMissing(f"LPIPS lin-head weights not found: the lpips package is not installed; {hint}")
    path = package_dir / LIN_RELPATH
    if not path.is_file():
        raise LPIPSWeightsMissing(f"LPIPS lin-head weights not found at {path}; {hint}")
    return path


def _lpips_package_dir() -> Path | None:
    # find_spec on a top-level name locates the package without executing its __init__
    # (which would import torchvision).
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt file, a pickled model, ...: one clear line, not a traceback
        raise LPIPSWeightsError(f"{path}: cannot read as a PyTorch state dict ({type(e).__name__}: {e})") from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise LPIPSWeightsError(f"{path}: expected a state dict of tensors, got {type(sd).__name__}")
    return sd


def _check_keys(
    sd: dict[str, torch.Tensor], expected: dict[str, torch.Size], path: Path, ignore_prefix: str | None = None
) -> dict[str, torch.Tensor]:
    """Strict key/shape check; returns the expected subset of ``sd``."""
    for key, value in sd.items():
        if key in expected:
            if value.shape != expected[key]:
                raise LPIPSWeightsError(
                    f"{path}: key {key!r} has shape {tuple(value.shape)}, expected {tuple(expected[key])}"
                )
        elif not (ignore_prefix and key.startswith(ignore_prefix)):
            raise LPIPSWeightsError(f"{path}: unexpected key {key!r}")
    for key in expected:
        if key not in sd:
            raise LPIPSWeightsError(f"{path}: missing key {key!r}")
    return {key: sd[key] for key in expected}


def load_vgg16_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a torchvision VGG16 file (or one with only ``features.*``) -> ``features.*`` tensors.

    Every ``features.*`` key must be present with torchvision's shape; ``classifier.*`` is
    dropped; anything else raises :class:`LPIPSWeightsError` naming the file and the key.
    """
    path = Path(path)
    with torch.device("meta"):  # shapes only; no memory, no init cost
        expected = {k: v.shape for k, v in VGG16Features().state_dict().items()}
    return _check_keys(_read_state_dict(path), expected, path, ignore_prefix="classifier.")


def load_lin_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read the lpips package's ``vgg.pth`` -> ``{"lin{k}.model.1.weight": (1, C_k, 1, 1)}``."""
    path = Path(path)
    expected = {f"lin{k}.model.1.weight": torch.Size((1, c, 1, 1)) for k, c in enumerate(TAP_CHANNELS)}
    return _check_keys(_read_state_dict(path), expected, path)


# ---------------------------------------------------------------------------- LPIPS
def normalize_channels(feat: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """``(N, C, h, w)`` -> each spatial feature vector divided by its L2 norm over C (+ eps)."""
    return feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


class LPIPS(nn.Module):
    """LPIPS v0.1 distance with a VGG16 trunk; frozen, always in eval mode.

    ``LPIPS()`` builds randomly initialised weights (tests; also fine under
    ``torch.device("meta")``); ``LPIPS.from_pretrained()`` loads the real ones.

    forward: ``x, y: (N, 3, H, W)`` in [-1, 1], H, W >= 16 -> ``(N,)`` float32 distances
    (0 for x == y; with the calibrated, non-negative heads >= 0, typically 0.0-0.7 for
    natural images). Differentiable w.r.t. the inputs, so it serves as a training loss; no
    parameter ever requires grad.
    """

    def __init__(self):
        super().__init__()
        # Non-persistent: constants of the metric, not learned state, so checkpoints of a parent
        # module do not carry them.
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.net = VGG16Features()
        # lpips' NetLinLayer is Dropout + 1x1 conv; dropout is inactive in eval, so only the conv.
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, kernel_size=1, bias=False) for c in TAP_CHANNELS)
        self.requires_grad_(False)
        self.train(False)

    @classmethod
    def from_pretrained(
        cls, vgg_path: str | os.PathLike | None = None, lin_path: str | os.PathLike | None = None
    ) -> "LPIPS":
        """ImageNet VGG16 (see :func:`find_vgg16_weights`) + calibrated lin heads (see
        :func:`find_lin_weights`). Raises :class:`LPIPSWeightsMissing` / :class:`LPIPSWeightsError`."""
        vgg_sd = load_vgg16_state_dict(find_vgg16_weights(vgg_path))
        lin_sd = load_lin_state_dict(find_lin_weights(lin_path))
        model = cls()
        model.net.load_state_dict(vgg_sd, strict=True)
        for k, lin in enumerate(model.lins):
            lin.load_state_dict({"weight": lin_sd[f"lin{k}.model.1.weight"]}, strict=True)
        return model

    def _taps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``(N, 3, H, W)`` in [-1, 1] -> the 5 VGG taps of the ImageNet-scaled images."""
        return self.net((images.to(self.shift.dtype) - self.shift) / self.scale)

    def train(self, mode: bool = True) -> "LPIPS":
        # A fixed metric: a parent's .train() must not switch it (and its trunk) to training mode.
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(
                f"LPIPS expects two (N, 3, H, W) images of equal shape, got {tuple(x.shape)} and {tuple(y.shape)}"
            )
        if min(x.shape[-2:]) < 16:
            # relu5_3 sits after 4 max-pools
            raise ValueError(f"LPIPS needs images of at least 16x16 pixels, got {tuple(x.shape)}")
        if torch.is_grad_enabled() and x.requires_grad != y.requires_grad:
            # Loss use: gradients flow into one side only (the reconstruction, not the target).
            # Running the other side without autograd keeps half as many trunk activations alive.
            with torch.set_grad_enabled(x.requires_grad):
                taps_x = self._taps(x)
            with torch.set_grad_enabled(y.requires_grad):
                taps_y = self._taps(y)
        else:
            # One trunk pass over both images: a batch of 2N keeps the convolutions busier than two of N.
            taps_x, taps_y = zip(*(t.chunk(2) for t in self._taps(torch.cat([x, y]))))
        # Under fp16 autocast the trunk runs in half precision, but the normalisation (a sum of
        # squares over up to 512 channels) and the heads run in fp32, where they cannot overflow.
        # (the meta device, where memory is estimated, has no autocast of its own: CPU's stands in)
        with torch.autocast(device_type="cpu" if x.device.type == "meta" else x.device.type, enabled=False):
            dist = x.new_zeros((x.shape[0], 1, 1, 1), dtype=torch.float32)
            for fx, fy, lin in zip(taps_x, taps_y, self.lins):
                diff = (normalize_channels(fx.float()) - normalize_channels(fy.float())).pow(2)  # (N, C, h, w)
                dist = dist + F.conv2d(diff, lin.weight.float()).mean(dim=(2, 3), keepdim=True)
        return dist.flatten()


def try_lpips(vgg_path: str | os.PathLike | None = None, device="cpu") -> tuple[LPIPS | None, str | None]:
    """``(LPIPS on device, None)``, or ``(None, why)`` without the VGG16 weights: metrics then
    report LPIPS as unavailable instead of failing."""
    try:
        return LPIPS.from_pretrained(vgg_path).to(device), None
    except LPIPSWeightsMissing as e:
        return None, str(e)
