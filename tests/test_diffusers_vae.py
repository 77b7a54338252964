"""diffusers' video autoencoders as kinds of this project (eval/diffusers_vae.py): small randomly
initialised Wan and CogVideoX configs (no weights) -- their shapes, FLOP counts against a direct
count, reconstruction and its metrics -- and the diffusers: kinds through the table, profile and
eval-recon's loader."""

import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers", reason="diffusers is the optional extra: pip install -e '.[diffusers]'")

from coordtok.config import ConfigError  # noqa: E402
from coordtok.kinds import KINDS, get_kind, tokenizers  # noqa: E402
from eval.diffusers_vae import (  # noqa: E402
    DiffusersError,
    DiffusersReconstructor,
    build_autoencoder,
    coding_flops,
    geometry,
)
from eval.tokenizers import checkpoint_kind, load_reconstructor  # noqa: E402

WAN = "diffusers:AutoencoderKLWan"
COG = "diffusers:AutoencoderKLCogVideoX"
# Small versions of the default architectures: same blocks, narrower and shallower; compression
# unchanged (4 x 8 x 8: three spatial downsamplings, two of them also in time).
SMALL = {
    WAN: {
        "base_dim": 8,
        "z_dim": 4,
        "dim_mult": [1, 2, 2, 2],
        "num_res_blocks": 1,
        "latents_mean": [0.0] * 4,
        "latents_std": [1.0] * 4,
    },
    COG: {"block_out_channels": [8, 8, 16, 16], "latent_channels": 4, "layers_per_block": 1, "norm_num_groups": 4},
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def direct_flops(model, run) -> int:
    """FLOPs of ``run()`` on a real CPU, summed by hand from the shapes each layer sees: a
    convolution 2 x (output values) x (input channels / groups) x (kernel volume), a linear layer
    2 x (output values) x (input features), attention 4 x (query rows) x (keys) x (head dim)
    (its two matmuls). Bias additions, norms and activations are not matmul FLOPs, as in torch's
    counter."""
    total = [0]

    def conv_or_linear(module, inputs, output):
        if isinstance(module, torch.nn.Linear):
            total[0] += 2 * output.numel() * module.in_features
        else:
            kernel = torch.tensor(module.kernel_size).prod().item()
            total[0] += 2 * output.numel() * module.in_channels // module.groups * kernel

    handles = [
        m.register_forward_hook(conv_or_linear)
        for m in model.modules()
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear))
    ]
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counted_sdpa(q, k, v, *args, **kwargs):
        total[0] += 4 * q.shape[:-1].numel() * k.shape[-2] * q.shape[-1]
        return sdpa(q, k, v, *args, **kwargs)

    torch.nn.functional.scaled_dot_product_attention = counted_sdpa
    try:
        with torch.no_grad():
            out = run()
    finally:
        torch.nn.functional.scaled_dot_product_attention = sdpa
        for h in handles:
            h.remove()
    return total[0], out


# 10 frames are padded to the shortest causal length covering them: Wan 1 + 3 x 4 = 13 (4 latent
# frames); CogVideoX decodes latent frames in pairs after the first, so 1 + 4 x 4 = 17 (5).
CLIP = {WAN: (13, 4), COG: (17, 5)}


@pytest.mark.slow
@pytest.mark.parametrize("spec", [WAN, COG])
def test_small_config_shapes_and_meta_flops_equal_a_direct_count(spec):
    model = build_autoencoder(spec, SMALL[spec])
    geo = geometry(model)
    assert (geo.time, geo.space, geo.channels) == (4, 8, 4)
    clip, t = CLIP[spec]
    assert geo.clip_frames(10) == clip and geo.latent_shape(10, 32) == (4, t, 4, 4)
    x = torch.rand(1, 3, clip, 32, 32) * 2 - 1
    enc_direct, z = direct_flops(model, lambda: model.encode(x).latent_dist.mode())
    assert z.shape == (1, 4, t, 4, 4)
    dec_direct, y = direct_flops(model, lambda: model.decode(z).sample)
    assert y.shape == x.shape
    counted = coding_flops(spec, 10, size=32, config=SMALL[spec], train=True)
    assert counted["counted_on"] == "meta" and counted["clip_frames"] == clip
    assert counted["latent_shape"] == (4, t, 4, 4)
    assert counted["encode"] == enc_direct and counted["decode"] == dec_direct
    # a training step: the forward (encode + decode) and a backward of one to two times it (the
    # weight gradients, and the input gradients of every layer but the first)
    forward = enc_direct + dec_direct
    assert 2 * forward < counted["train"] <= 3 * forward


@pytest.mark.slow
@pytest.mark.parametrize("spec", [WAN, COG])
def test_reconstruction_runs_and_reports_finite_metrics(spec):
    from eval.recon import evaluate_clip, markdown_table

    tok = DiffusersReconstructor(build_autoencoder(spec, SMALL[spec]), spec, size=32, random_weights=True)
    assert "random weights" in tok.name and "4x8x8" in tok.name and "4 channels" in tok.name
    assert "feature cache" in tok.name  # Wan and CogVideoX: causal over frame groups, no tiles
    frames = 20  # padded to 21 (6 latent frames, CogVideoX 25: 7), the padding cut off again
    t = {WAN: 6, COG: 7}[spec]
    assert tok.tokens(frames) == t * 4 * 4 and tok.token_channels == 4
    video = torch.rand(3, frames, 32, 32) * 2 - 1
    rec, seams = tok.reconstruct(video[None])
    assert rec.shape == (1, 3, frames, 32, 32) and rec.abs().max() <= 1 and seams == []
    m = evaluate_clip(tok, video, frames, None, lpips=None, vgg_path="/nonexistent/vgg.pth")
    assert all(torch.isfinite(torch.tensor(m[k])) for k in ("psnr", "ssim", "seam_boundary", "seam_within"))
    assert m["tokens"] == t * 16 and m["token_channels"] == 4 and m["tokenizer"] == tok.name
    row = {**m, "clips": 1, "size": 32, "seed": 0}
    assert f"| {tok.name} | {t * 16} x 4 |" in markdown_table([row], frames)


@pytest.mark.slow
def test_a_model_that_fails_on_meta_is_counted_on_the_cpu(monkeypatch):
    import eval.diffusers_vae as dv

    small = SMALL[WAN]
    on_meta = coding_flops(WAN, 6, size=16, config=small)
    real_encode = dv.encode

    def encode_needing_values(model, video, *args, **kwargs):
        if video.device.type == "meta":  # as a model reading a tensor's values (.item()) would
            raise NotImplementedError("Cannot copy out of meta tensor; no data!")
        return real_encode(model, video, *args, **kwargs)

    monkeypatch.setattr(dv, "encode", encode_needing_values)
    dv._geometry.cache_clear()  # its compression is found again, on the CPU too
    on_cpu = coding_flops(WAN, 6, size=16, config=small)
    assert on_cpu["counted_on"] == "cpu" and on_meta["counted_on"] == "meta"
    assert (on_cpu["encode"], on_cpu["decode"]) == (on_meta["encode"], on_meta["decode"])


def test_hunyuan_temporal_tiles_are_its_seams():
    spec = "diffusers:AutoencoderKLHunyuanVideo"
    small = {
        "block_out_channels": [8, 8, 16, 16],
        "latent_channels": 4,
        "layers_per_block": 1,
        "norm_num_groups": 4,
        "mid_block_add_attention": False,
    }
    tok = DiffusersReconstructor(build_autoencoder(spec, small), spec, size=16, random_weights=True)
    assert "temporal tiles of 17 frames every 12" in tok.name
    # tiles once the coded clip is longer than 16 frames: 12 frames (13 coded) are one pass, 16 (17) two tiles
    assert tok.seams(12) == [] and tok.seams(16) == [12] and tok.seams(40) == [12, 24, 36]
    rec, seams = tok.reconstruct(torch.rand(1, 3, 40, 16, 16) * 2 - 1)
    assert rec.shape == (1, 3, 40, 16, 16) and seams == [12, 24, 36] and bool(torch.isfinite(rec).all())


def test_the_kinds_are_reached_by_name_and_are_not_trained(tmp_path):
    kind = get_kind(WAN, role="tokenizer")
    assert kind.name == WAN and kind.role == "tokenizer" and kind.task is None
    assert WAN not in KINDS and all(k.name != WAN for k in tokenizers())  # coordtok train does not list it
    with pytest.raises(ConfigError, match="has no task .*not trained"):
        kind.resolve("task")
    assert checkpoint_kind(WAN) == WAN
    with pytest.raises(ConfigError, match="blend does not apply"):  # refused before anything is built
        load_reconstructor(WAN, blend="linear")
    with pytest.raises(DiffusersError, match="neither a folder nor an autoencoder class.*AutoencoderKLWan"):
        build_autoencoder("diffusers:NoSuchVAE", device="meta")
    with pytest.raises(DiffusersError, match="neither config.json nor vae/config.json"):
        build_autoencoder(f"diffusers:{tmp_path}", device="meta")


def test_a_local_pretrained_folder_loads_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = build_autoencoder(COG, SMALL[COG])
    model.save_pretrained(tmp_path / "pipe" / "vae")  # a pipeline folder: the autoencoder in vae/
    config = json.loads((tmp_path / "pipe" / "vae" / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderKLCogVideoX"
    tok = load_reconstructor(f"diffusers:{tmp_path / 'pipe'}", size=32)
    assert isinstance(tok, DiffusersReconstructor) and "weights of" in tok.name
    for a, b in zip(model.state_dict().values(), tok.model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_profile_puts_a_default_autoencoder_beside_coordtok(tmp_path):
    from coordtok.kinds import ROOT
    from eval.profile import profile, write_report

    spec = "diffusers:AutoencoderKLCosmos"  # its Haar filters are CPU buffers: moved to meta with the model
    rows = profile(
        ROOT / "configs/tokenizer/tiny.yaml",
        [16],
        measure_memory=False,
        modes=("coordtok",),
        baselines=[spec],
        progress=lambda s: None,
        estimate_batch=None,
    )
    row = next(r for r in rows if r["family"] == spec)
    assert row["clip_frames"] == 17 and row["counted_on"] == "meta"
    assert (
        2 * (row["encode_flops"] + row["decode_flops"])
        < row["flops"]
        <= 3 * (row["encode_flops"] + row["decode_flops"])
    )
    write_report(rows, tmp_path, "t", "cpu")
    assert f"| 16 | {spec} | 17 |" in (tmp_path / "profile.md").read_text()


@pytest.mark.slow
def test_reconstruct_command_with_a_pretrained_folder(tmp_path, capsys, monkeypatch):
    from coordtok.cli import main
    from coordtok.video_io import sample_video_paths

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    build_autoencoder(COG, SMALL[COG]).save_pretrained(tmp_path / "vae")
    out = tmp_path / "rec.mp4"
    video = str(sample_video_paths()["bikes"])
    assert (
        main(
            [
                "reconstruct",
                "--ckpt",
                f"diffusers:{tmp_path / 'vae'}",
                "--video",
                video,
                "--frames",
                "12",
                "--out",
                str(out),
                "--no-vae-tiling",
            ]
        )
        == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    # 12 frames coded as 17 (5 latent frames) at 128 x 128: 5 x 16 x 16 positions of 4 floats
    assert metrics["frames"] == 12 and metrics["tokens"] == 5 * 16 * 16 and metrics["token_channels"] == 4
    assert torch.isfinite(torch.tensor(metrics["psnr"])) and out.stat().st_size > 0
    assert "no spatial tiling" in metrics["tokenizer"] and "weights of" in metrics["tokenizer"]


def test_only_eval_diffusers_vae_imports_diffusers():
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    importers = set()
    for package in ("coordtok", "sit", "baselines", "eval", "bench"):
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom) and not node.level
                    else []
                )
                if any(n == "diffusers" or n.startswith("diffusers.") for n in names):
                    importers.add(path.relative_to(root).as_posix())
    assert importers == {"eval/diffusers_vae.py"}


@pytest.mark.slow
def test_eval_recon_compares_a_diffusers_folder_with_coordtok_at_its_frame_side(root, tmp_path, capsys, monkeypatch):
    import decord
    from sit_common import tiny_tokenizer

    from coordtok.cli import main
    from coordtok.video_io import sample_video_paths, write_mp4

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ckpt = tiny_tokenizer(root)  # 64 x 64 frames: the autoencoder takes that side too
    build_autoencoder(WAN, SMALL[WAN]).save_pretrained(tmp_path / "wan")
    frames = (
        decord.VideoReader(str(sample_video_paths()["bikes"]), width=64, height=64, num_threads=1)
        .get_batch(list(range(40)))
        .asnumpy()
    )
    write_mp4(tmp_path / "real" / "a.mp4", frames)
    out = tmp_path / "out"
    assert (
        main(
            [
                "eval-recon",
                "--ckpt",
                str(ckpt),
                "--ckpt",
                f"diffusers:{tmp_path / 'wan'}",
                "--data",
                str(tmp_path / "real"),
                "--out",
                str(out),
                "--num-clips",
                "1",
                "--frames",
                "20",
                "--no-fvd",
                "--write-videos",
                "0",
                "--no-progress",
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    coordtok, wan = json.loads(capsys.readouterr().out)["results"]
    assert wan["size"] == coordtok["size"] == 64
    # 20 frames coded as 21: 6 latent frames of 8 x 8 positions, 4 floats each
    assert wan["tokens"] == 6 * 8 * 8 and wan["token_channels"] == 4 and "token_channels" not in coordtok
    assert all(np.isfinite(r[k]) for r in (coordtok, wan) for k in ("psnr", "ssim", "seam_boundary", "seam_within"))
    assert f"| {wan['tokenizer']} | {6 * 64} x 4 |" in (out / "recon.md").read_text()
