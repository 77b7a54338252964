"""The reference implementation's checkpoints load and compute what the reference computes.

Fixtures (tests/fixtures/reference/README.md): tiny checkpoints in the reference's formats and
the reference code's own outputs on fixed inputs, made by its code with random weights.

Tolerances. Ours and the reference evaluate the same float32 function in different orders
(one GEMM instead of conv3d for the patch embedding, SDPA instead of nn.MultiheadAttention's
matmul + softmax, grid_sample instead of hand-written bilinear, split instead of packed
projections). A float32 dot product of length K then differs by about sqrt(K) * u * |x| with
u = 2^-24 ~ 6e-8: ~1e-6 for K <= 256 and activations ~1. About ten such steps run in sequence
(patch embedding, attention, MLP and LayerNorm per block, through <= 4 blocks and the head), on
outputs up to |y| ~ 2.5, and the errors add like a random walk: a few 1e-6 (measured: at most
1.3e-6 for the tokenizer, 5e-7 for the SiT). 2e-5 leaves 15x headroom for other CPU kernels and
BLAS builds, yet sits below what a real mistake costs: the decoder with the wrong LayerNorm
epsilon (1e-6 instead of the reference's 1e-5) is off by 8e-5..1.1e-4, a wrong epsilon in the
cross-self encoder by 2.5e-5..5e-5, and a transposed or misplaced weight by O(1). (A wrong ViT
epsilon moves the outputs by only 4e-6..7e-6, under the bound: test_layernorm_epsilons_are_the_
references checks it directly.) The SiT is shallower and its outputs are compared directly, hence
1e-5 (measured 5e-7).
"""

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from einops import rearrange

from coordtok import checkpoint as ckpt
from coordtok.checkpoint import load_any
from coordtok.config import ConfigError, ModelConfig, load_model_config, model_config_from_checkpoint
from coordtok.errors import CoordTokError
from coordtok.model import CoordTok, frame_coords
from coordtok.reference import (
    convert_coordtok,
    infer_coordtok_config,
    is_reference_coordtok,
    reference_layout,
    reference_step,
    to_project_checkpoint,
)
from coordtok.triplane import Triplane
from sit.config import SiTConfig
from sit.models import TriplaneSiT, sincos_2d
from sit.reference import convert_sit, is_reference_sit, parse_reference_log

FIX = Path(__file__).parent / "fixtures" / "reference"
TOL = 2e-5  # tokenizer, fp32 (module docstring)
SIT_TOL = 1e-5
HEADS = {"A": {"enc_heads": 4, "dec_heads": 4}, "B": {"enc_heads": 2, "dec_heads": 3}}
PLANES = ("xy", "yt", "xt")


@pytest.fixture(scope="module")
def inputs():
    return torch.load(FIX / "inputs.pt", weights_only=True)


@pytest.fixture(scope="module")
def ref():
    return torch.load(FIX / "ref_outputs_timm1.0.11.pt", weights_only=True)


def _raw(name: str) -> dict:
    return torch.load(FIX / f"coordtok_{name}.pth", weights_only=True)


def _run(cfg: ModelConfig, state: dict, inputs: dict, name: str) -> tuple[dict, CoordTok]:
    """Our outputs in the reference's layouts: planes (B, R, S, C), patches (B, N, pt*p*p*3)."""
    model = CoordTok(cfg).eval()
    model.load_state_dict(state)  # strict: every key of ours is filled, nothing left over
    video = rearrange(inputs[f"video_u8_{name}"].float() / 255 * 2 - 1, "b t h w c -> b c t h w")
    tp = cfg.patch_grid[0]
    full = frame_coords(torch.arange(tp).expand(video.shape[0], tp), cfg.patch_grid)  # (t, h, w) order
    as_ref = "b n c pt ph pw -> b n (pt ph pw c)"
    with torch.no_grad():
        tri = model.encode(video)
        out = {f"triplane_{p}": rearrange(getattr(tri, p), "b c r s -> b r s c") for p in PLANES}
        out["decode_full"] = rearrange(model.decode(tri, full), as_ref)
        out["decode_rand"] = rearrange(model.decode(tri, inputs[f"coords_rand_{name}"]), as_ref)
    return out, model


def _max_err(ours: dict, ref: dict, name: str) -> dict:
    return {k: (v - ref[f"{name}/{k}"]).abs().max().item() for k, v in ours.items()}


# ---------------------------------------------------------------------------- the tokenizer


@pytest.mark.parametrize("name", ["A", "B"])
def test_tokenizer_computes_what_the_reference_computes(name, inputs, ref):
    cfg, state, info = convert_coordtok(load_any(FIX / f"coordtok_{name}.pth"), **HEADS[name])
    assert "stage 1" in info and f"{cfg.num_latent_tokens} tokens" in info
    ours, model = _run(cfg, state, inputs, name)
    for key, value in ours.items():
        assert value.shape == ref[f"{name}/{key}"].shape, key
    errors = _max_err(ours, ref, name)
    assert max(errors.values()) < TOL, errors
    # The decoder alone, from the reference's own triplane.
    tri = Triplane(*(rearrange(ref[f"{name}/triplane_{p}"], "b r s c -> b c r s") for p in PLANES))
    with torch.no_grad():
        rand = model.decode(tri, inputs[f"coords_rand_{name}"])
    assert (rearrange(rand, "b n c pt ph pw -> b n (pt ph pw c)") - ref[f"{name}/decode_rand"]).abs().max() < TOL


def test_layernorm_epsilons_are_the_references(inputs, ref):
    cfg, state, _ = convert_coordtok(load_any(FIX / "coordtok_A.pth"), **HEADS["A"])
    ours, model = _run(cfg, state, inputs, "A")
    eps = {
        part: {m.eps for m in getattr(model, part).modules() if isinstance(m, torch.nn.LayerNorm)}
        for part in ("video_encoder", "triplane_encoder", "decoder")
    }
    assert eps == {"video_encoder": {1e-5}, "triplane_encoder": {1e-6}, "decoder": {1e-5}}
    # The bound sees the epsilon: with 1e-6 everywhere (this project's old models) the decoded
    # patches leave it, and the triplane is further from the reference than with the right ones.
    legacy = dataclasses.replace(cfg, vit_norm_eps=1e-6, cross_norm_eps=1e-6, dec_norm_eps=1e-6)
    right, wrong = _max_err(ours, ref, "A"), _max_err(_run(legacy, state, inputs, "A")[0], ref, "A")
    assert wrong["decode_full"] > TOL and wrong["decode_rand"] > TOL
    assert max(wrong[f"triplane_{p}"] for p in PLANES) > 2 * max(right[f"triplane_{p}"] for p in PLANES)


@pytest.mark.parametrize("name", ["A", "B"])
def test_inferred_config_is_the_project_yaml(name):
    want = load_model_config(FIX / f"coordtok_{name}.project.yaml")
    assert infer_coordtok_config(_raw(name), **HEADS[name]) == want
    # Also from the bare state dict, with or without DDP's prefix.
    bare = {k.removeprefix("module."): v for k, v in _raw(name)["model"].items()}
    assert infer_coordtok_config(bare, heads=None, **HEADS[name]) == want


def test_ambiguous_clip_shape_prefers_the_largest_patch_and_takes_hints():
    raw = _raw("B")  # the head's 3 * 32 outputs fit (pt 2, p 4), (pt 8, p 2) and (pt 32, p 1)
    cfg = infer_coordtok_config(raw, heads=1)
    assert (cfg.frames, cfg.size, cfg.dec_patch_t, cfg.dec_patch_xy) == (32, 16, 2, 4)
    cfg = infer_coordtok_config(raw, heads=1, frames=128)
    assert (cfg.frames, cfg.size, cfg.dec_patch_t, cfg.dec_patch_xy) == (128, 8, 8, 2)
    with pytest.raises(ckpt.CheckpointError, match="it fits 32 frames of 16x16, 128 frames of 8x8"):
        infer_coordtok_config(raw, heads=1, frames=64)


def _paper_large_state() -> dict:
    """A reference CoordTok-L state dict (the released configuration) of meta tensors: shapes only."""
    cfg = ModelConfig(
        enc_dim=1024, enc_layers=8, enc_heads=16, cross_layers=24, dec_dim=1024, dec_layers=24, dec_heads=16
    )
    return {"module." + k: torch.empty(shape, device="meta") for k, (shape, _) in reference_layout(cfg).items()}


def test_heads_default_to_width_over_64_and_the_paper_size_is_named():
    sd = _paper_large_state()
    cfg = infer_coordtok_config(sd)
    assert (cfg.enc_heads, cfg.dec_heads, cfg.enc_layers, cfg.cross_layers, cfg.dec_layers) == (16, 16, 8, 24, 24)
    assert (cfg.frames, cfg.size, cfg.num_latent_tokens) == (128, 128, 1280)
    _, state, info = convert_coordtok({"model": sd})
    assert info.startswith("reference CoordTok checkpoint, CoordTok-L, 1280 tokens")
    with torch.device("meta"):
        want = {k: v.shape for k, v in CoordTok(cfg).state_dict().items()}
    assert {k: v.shape for k, v in state.items()} == want
    # A width that is no multiple of 64 needs the heads.
    a = _raw("A")
    with pytest.raises(ckpt.CheckpointError, match="96-d.*pass --heads") as err:
        infer_coordtok_config(
            {**a["model"], "module.decoder.transformer.pos_embed": torch.zeros(1, 16, 4, 4, 96)}, enc_heads=4
        )
    assert "\n" not in str(err.value)


def test_stage2_file_drops_the_lpips_weights(tmp_path):
    shapes = json.loads((FIX / "lpips_keys_stage2.json").read_text())
    raw = _raw("A")
    # Stride-0 views: the right shapes, stored as one number each (the real VGG16 is 59 MB).
    raw["model"].update({k: torch.zeros(()).expand(*s) for k, s in shapes.items()})
    torch.save(raw, tmp_path / "stage2.pth")
    cfg, state, info = convert_coordtok(load_any(tmp_path / "stage2.pth"), **HEADS["A"])
    assert len(shapes) == 33 and "stage 2: LPIPS loss weights dropped (33 tensors)" in info
    assert not any("lpips" in k for k in state)
    _, stage1, _ = convert_coordtok(_raw("A"), **HEADS["A"])
    assert state.keys() == stage1.keys() and all(torch.equal(state[k], stage1[k]) for k in state)


@pytest.mark.parametrize(
    "change, key, words",
    [
        ("shape", "module.encoder.transformer.layers.1.self_attn.out_proj.weight", "has shape (64, 63)"),
        ("missing", "module.decoder.projector.bias", "is missing"),
        ("missing", "module.encoder.encoder.cls_token", "is missing"),
        ("unknown", "module.encoder.transformer.layers.1.extra.weight", "unknown key"),
        ("shape", "module.weight_tokens_yt", "impossible configuration"),
    ],
)
def test_bad_files_are_one_line_errors_naming_the_key(change, key, words):
    raw = _raw("A")
    sd = raw["model"]
    if change == "missing":
        del sd[key]
    elif change == "unknown":
        sd[key] = torch.zeros(3)
    elif key.endswith("weight_tokens_yt"):
        sd[key] = torch.zeros(1, 7, 8, 4)  # 7 latent frames: not a multiple of the latent patch 4
    else:
        sd[key] = torch.zeros(64, 63)
    with pytest.raises(ckpt.CheckpointError) as err:
        convert_coordtok(raw, source="bad.pth", **HEADS["A"])
    msg = str(err.value)
    assert isinstance(err.value, CoordTokError) and "\n" not in msg
    assert msg.startswith("bad.pth: ") and f"'{key}'" in msg and words in msg


def test_format_detection():
    a, sit = _raw("A"), ckpt.load_any(FIX / "sit_run" / "checkpoints" / "0000100.pt")
    bare = {k.removeprefix("module."): v for k, v in a["model"].items()}
    assert is_reference_coordtok(a) and is_reference_coordtok(a["model"]) and is_reference_coordtok(bare)
    assert is_reference_sit(sit) and is_reference_sit(sit["ema"])
    assert not is_reference_coordtok(sit) and not is_reference_sit(a)
    with torch.device("meta"):
        ours = CoordTok(load_model_config(FIX / "coordtok_A.project.yaml")).state_dict()
    project = {"kind": "coordtok", "version": 2, "model": ours}
    assert not is_reference_coordtok(project) and not is_reference_sit({**project, "kind": "sit", "ema": ours})


def test_project_checkpoint_round_trip(tmp_path, inputs):
    raw = _raw("B")
    cfg, state, info = convert_coordtok(raw, **HEADS["B"])
    ckpt.atomic_save(to_project_checkpoint(cfg, state, info, reference_step(raw)), tmp_path / "b.pt")
    loaded, _ = ckpt.load_run(tmp_path / "b.pt", "coordtok", "CoordTok tokenizer")
    assert (loaded["version"], loaded["step"], loaded["source"], loaded["info"]) == (2, 50000, "reference", info)
    assert model_config_from_checkpoint(loaded["config"]["model"]) == cfg
    reloaded, direct = _run(cfg, loaded["model"], inputs, "B")[0], _run(cfg, state, inputs, "B")[0]
    assert reloaded["decode_rand"].equal(direct["decode_rand"])


def test_config_epsilons_old_checkpoints_and_yaml():
    old = dataclasses.asdict(load_model_config(FIX / "coordtok_A.project.yaml"))
    for key in ("vit_norm_eps", "cross_norm_eps", "dec_norm_eps"):
        del old[key]
    legacy = model_config_from_checkpoint(old)  # written before the keys existed: trained with 1e-6
    assert (legacy.vit_norm_eps, legacy.cross_norm_eps, legacy.dec_norm_eps) == (1e-6, 1e-6, 1e-6)
    fresh = load_model_config(FIX / "coordtok_A.project.yaml")  # a YAML file: the reference's
    assert (fresh.vit_norm_eps, fresh.cross_norm_eps, fresh.dec_norm_eps) == (1e-5, 1e-6, 1e-5)
    with pytest.raises(ConfigError, match="'dec_norm_eps' must be positive"):
        model_config_from_checkpoint({**old, "dec_norm_eps": 0.0})


# ---------------------------------------------------------------------------- the SiT


def test_sit_ema_computes_what_the_reference_computes(inputs, ref):
    cfg, ema, model_state, info = convert_sit(FIX / "sit_run" / "checkpoints" / "0000100.pt")
    assert cfg == SiTConfig.from_yaml(FIX / "sit.project.yaml")  # heads 4: named by args.model
    assert "learned sigma" in info and "EMA" in info
    # The stored sin-cos table was moved off its formula: loading it (not recomputing) matters.
    assert not torch.allclose(ema["pos_embed_xy"][0], sincos_2d(cfg.hidden, 4, 4), atol=1e-3)
    model = TriplaneSiT(cfg).eval()
    model.load_state_dict(ema)
    x = Triplane(inputs["sit_x_xy"], inputs["sit_x_yt"], inputs["sit_x_xt"])
    with torch.no_grad():
        v = model(x, inputs["sit_t"], inputs["sit_y"])
    for p in PLANES:
        assert (getattr(v, p) - ref[f"sit/v_{p}"]).abs().max() < SIT_TOL, p
    assert model_state is not None and not torch.equal(
        model_state["blocks.0.attn.qkv.weight"], ema["blocks.0.attn.qkv.weight"]
    )


def test_sit_heads_and_bad_keys():
    raw = ckpt.load_any(FIX / "sit_run" / "checkpoints" / "0000100.pt")
    args = vars(raw["args"])
    assert convert_sit({**raw, "args": {**args, "model": "custom"}}, heads=8)[0].heads == 8
    with pytest.raises(ckpt.CheckpointError, match="32-d, not a multiple of 64.*pass --heads"):
        convert_sit({**raw, "args": {**args, "model": "custom"}})
    with pytest.raises(ckpt.CheckpointError, match="contradicts args.model"):
        convert_sit(raw, heads=8)
    with pytest.raises(ckpt.CheckpointError, match="'SiT-L/2'"):
        convert_sit({**raw, "args": {**args, "model": "SiT-L/2"}})
    bad = {**raw, "ema": {**raw["ema"], "blocks.0.extra": torch.zeros(1)}}
    with pytest.raises(ckpt.CheckpointError, match="unknown 'ema' key 'blocks.0.extra'"):
        convert_sit(bad)


LOG_VALUES = {  # the literal numbers of tests/fixtures/reference/sit_run/log.txt
    "mean": [[0.2213, 0.5838, -0.2099, -0.3907], [0.0739, 0.1452, 0.1351, -0.2871], [-0.0703, -0.3214, 0.0494, 0.0347]],
    "std": [[1.0721, 1.4248, 0.7693, 1.2825], [1.3709, 1.2231, 1.3364, 1.0820], [0.7438, 0.8382, 1.3847, 0.5763]],
}


def test_log_statistics_are_parsed_exactly(tmp_path):
    stats = parse_reference_log(FIX / "sit_run" / "log.txt", (8, 8, 8))
    assert stats.grid == (8, 8, 8)
    assert stats.mean.tolist() == LOG_VALUES["mean"] and stats.std.tolist() == LOG_VALUES["std"]
    # With 8 channels of mixed magnitudes torch prints in scientific notation, over two lines.
    stamp = "[\x1b[34m2026-11-22 02:50:03\x1b[0m] "
    lines = [stamp + "SiT Parameters: 1"]
    values = torch.tensor([1e-5, 2.0, 3.5, 1e3, 0.1, 0.2, 0.3, 0.4])  # positive: they also serve as stds
    for k, name in enumerate(("xy_mean", "xy_std", "yt_mean", "yt_std", "xt_mean", "xt_std")):
        text = str(values * (k + 1)).replace("tensor(", f"{name}: tensor(")
        assert "\n" in text
        lines.append(stamp + text)
    (tmp_path / "log.txt").write_text("\n".join(lines) + "\n")
    wrapped = parse_reference_log(tmp_path / "log.txt", (4, 4, 4))
    printed = [[float(f"{v:.4e}") for v in (values * (k + 1)).tolist()] for k in range(6)]
    assert wrapped.mean.tolist() == printed[0::2] and wrapped.std.tolist() == printed[1::2]
    # A missing line names it.
    (tmp_path / "short.txt").write_text("\n".join(line for line in lines if "yt_std" not in line))
    with pytest.raises(ckpt.CheckpointError, match="no 'yt_std: tensor") as err:
        parse_reference_log(tmp_path / "short.txt", (4, 4, 4))
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------------- untrusted files


class Marker:
    """Creates a file when called: what a malicious pickle would do instead."""

    def __init__(self, path):
        Path(path).write_text("ran")


class Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Marker, (self.path,))


def test_a_file_with_pickled_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "marker"
    bad = tmp_path / "bad.pt"
    torch.save({"model": _raw("B")["model"], "extra": Payload(str(marker))}, bad)
    for load in (ckpt.load, ckpt.load_any, ckpt.load_tokenizer):
        with pytest.raises(ckpt.CheckpointError) as err:
            load(bad)
        msg = str(err.value)
        assert "\n" not in msg and "pickled object of type test_reference.Marker" in msg and "could run code" in msg
    assert not marker.exists()
    # The payload is live: an unsafe load would have run it.
    live = tmp_path / "live"
    torch.save(Payload(str(live)), tmp_path / "live.pt")
    torch.load(tmp_path / "live.pt", weights_only=False)
    assert live.read_text() == "ran"


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    state = ckpt.rng_state()
    draw = lambda: (random.random(), np.random.normal(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    want = draw()
    ckpt.atomic_save({"kind": "coordtok", "version": 2, "step": 0, "model": {}, "rng": state}, tmp_path / "c.pt")
    ckpt.set_rng_state(ckpt.load(tmp_path / "c.pt")["rng"])
    assert draw() == want
    # The old in-memory form (numpy's tuple) is still accepted.
    np.random.seed(5)
    old = np.random.get_state()
    expected = np.random.rand(2).tolist()
    ckpt.set_rng_state({**state, "numpy": old})
    assert np.random.rand(2).tolist() == expected
