"""TriplaneSiT: parameter count, shapes, adaLN-Zero init, configs, EMA, and that it learns."""

from pathlib import Path

import pytest
import torch
import yaml

from coordtok.triplane import Triplane
from sit import (
    SampleConfig,
    SiTConfig,
    SiTTrainConfig,
    TriplaneSiT,
    create_ema,
    load_sit_configs,
    training_loss,
    update_ema,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "sit"
REFERENCE_PARAMS = 461.4e6  # SiT-L/2 over the 1280-token triplane, reference implementation


def random_triplane(batch, grid, channels, generator=None):
    tl, hl, wl = grid
    return Triplane(
        torch.randn(batch, channels, hl, wl, generator=generator),
        torch.randn(batch, channels, tl, wl, generator=generator),
        torch.randn(batch, channels, tl, hl, generator=generator),
    )


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return TriplaneSiT.from_config(CONFIGS / "tiny.yaml")


def _perturb(model, scale=0.05, seed=0):
    """Give the zero-initialised layers some weights so outputs depend on the input."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return model


# ---------------------------------------------------------------------------- size
def test_parameter_count_l2_1280_on_meta():
    with torch.device("meta"):
        model = TriplaneSiT.from_config(CONFIGS / "L2-1280.yaml")
        reference_layout = TriplaneSiT(SiTConfig(learn_sigma=True))
    ours, ref = model.num_parameters(), reference_layout.num_parameters()
    print(f"SiT-L/2 1280 tokens: {ours:,} trainable parameters ({ref:,} with the learned-sigma half)")
    assert abs(ours - REFERENCE_PARAMS) / REFERENCE_PARAMS < 0.01
    assert abs(ref - REFERENCE_PARAMS) / REFERENCE_PARAMS < 0.001
    assert sum(model.plane_num_tokens.values()) == 64 + 128 + 128


def test_parameter_layout_matches_reference_names():
    with torch.device("meta"):
        model = TriplaneSiT(SiTConfig(depth=1, learn_sigma=True))
    names = set(model.state_dict())
    expected = {
        "x_embedder_xy.proj.weight", "x_embedder_yt.proj.bias", "x_embedder_xt.proj.weight",
        "t_embedder.mlp.0.weight", "t_embedder.mlp.2.bias", "y_embedder.embedding_table.weight",
        "pos_embed_xy", "pos_embed_t", "type_embed",
        "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.bias", "blocks.0.mlp.fc1.weight",
        "blocks.0.mlp.fc2.bias", "blocks.0.adaLN_modulation.1.weight",
        "final_layer_xy.linear.weight", "final_layer_yt.adaLN_modulation.1.bias", "final_layer_xt.linear.bias",
    }  # fmt: skip
    assert expected <= names
    assert tuple(model.y_embedder.embedding_table.weight.shape) == (1, 1024)
    assert tuple(model.final_layer_xy.linear.weight.shape) == (2 * 2 * 16, 1024)
    assert tuple(model.pos_embed_t.shape) == (1, 128, 1024)
    assert "pos_embed_xy" not in dict(model.named_parameters())  # fixed: a buffer


def test_l2_3072_config_builds_on_meta():
    with torch.device("meta"):
        model = TriplaneSiT.from_config(CONFIGS / "L2-3072.yaml")
    assert model.grid == (32, 32, 32)
    assert model.plane_num_tokens == {"xy": 256, "yt": 256, "xt": 256}


# ---------------------------------------------------------------------------- forward
def test_shape_round_trips(tiny):
    x = random_triplane(3, tiny.grid, tiny.in_channels)
    t = torch.rand(3)
    out = tiny(x, t)
    assert isinstance(out, Triplane)
    assert [p.shape for p in out.planes()] == [p.shape for p in x.planes()]
    flat = x.flatten()
    out_flat = tiny(flat, t)
    assert isinstance(out_flat, torch.Tensor) and out_flat.shape == flat.shape == (3, 8 * 8 + 16 * 8 * 2, 4)


def test_zero_output_at_init(tiny):
    x = random_triplane(2, tiny.grid, tiny.in_channels)
    out = tiny(x, torch.tensor([0.1, 0.9]))
    for plane in out.planes():
        assert torch.count_nonzero(plane) == 0


def test_flat_and_triplane_forms_agree_and_planes_are_distinct(tiny):
    _perturb(tiny)
    x = random_triplane(2, tiny.grid, tiny.in_channels, torch.Generator().manual_seed(1))
    t = torch.tensor([0.3, 0.7])
    out = tiny(x, t)
    assert torch.allclose(out.flatten(), tiny(x.flatten(), t), atol=1e-6)
    # Time conditions the output, and a scalar t broadcasts over the batch.
    assert not torch.allclose(tiny(x, torch.tensor([0.9, 0.9])).xy, out.xy, atol=1e-3)
    assert torch.allclose(tiny(x, 0.9).xy, tiny(x, torch.tensor([0.9, 0.9])).xy)
    # Items of a batch do not interact.
    assert torch.allclose(tiny(x[1], t[1:]).yt, out.yt[1:], atol=1e-6)


def test_learn_sigma_output_has_input_channels():
    torch.manual_seed(0)
    cfg = SiTConfig.from_yaml(CONFIGS / "tiny.yaml")
    model = _perturb(TriplaneSiT(cfg, learn_sigma=True))
    x = random_triplane(1, model.grid, model.in_channels)
    assert model.final_layer_xy.linear.out_features == 2 * 2 * 2 * model.in_channels
    out = model(x, torch.rand(1))
    assert [p.shape for p in out.planes()] == [p.shape for p in x.planes()]


def test_wrong_grid_is_a_clear_error(tiny):
    x = random_triplane(1, (8, 8, 8), tiny.in_channels)
    with pytest.raises(ValueError, match="grid"):
        tiny(x, torch.rand(1))


# ---------------------------------------------------------------------------- configs
def test_configs_load_and_defaults_are_the_paper():
    model, train, sample = load_sit_configs(CONFIGS / "L2-1280.yaml")
    assert model == SiTConfig()
    assert (model.hidden, model.depth, model.heads, model.patch, model.grid, model.channels) == (
        1024, 24, 16, 2, (32, 16, 16), 8,
    )  # fmt: skip
    assert train == SiTTrainConfig() and train.lr == 1e-4 and train.ema == 0.9999 and train.iterations == 600_000
    assert sample == SampleConfig() and sample.steps == 250 and sample.last_step_size == 0.04
    for name in ("L2-3072.yaml", "tiny.yaml"):
        load_sit_configs(CONFIGS / name)


def test_unknown_keys_name_key_and_file(tmp_path):
    data = yaml.safe_load((CONFIGS / "tiny.yaml").read_text())
    data["model"]["hiden"] = 64
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"bad\.yaml: model\.hiden: unknown key"):
        TriplaneSiT.from_config(path)
    data["model"].pop("hiden")
    data["train"]["learning_rate"] = 1e-4
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"bad\.yaml: train\.learning_rate: unknown key"):
        SiTTrainConfig.from_yaml(path)
    data["train"].pop("learning_rate")
    data["sample"]["stepz"] = 3
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"bad\.yaml: sample\.stepz: unknown key"):
        SampleConfig.from_yaml(path)
    with pytest.raises(ValueError, match="depth"):
        TriplaneSiT.from_config({"model": {"depth": "two"}})
    with pytest.raises(ValueError, match="divisible"):
        SiTConfig(hidden=66, heads=4)


def test_one_error_format_for_both_packages(tmp_path):
    """The same typo in a tokenizer and a SiT config reads the same way: ``<file>: <section>.<key>: ...``."""
    from coordtok.config import ConfigError, load_tokenizer_config
    from sit.config import load_sit_run_config

    messages = []
    for name, loader in (("tokenizer/tiny.yaml", load_tokenizer_config), ("sit/tiny.yaml", load_sit_run_config)):
        data = yaml.safe_load((CONFIGS.parent / name).read_text())
        data["train"]["learning_rate"] = 1e-4
        path = tmp_path / name.replace("/", "-")
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(ConfigError) as info:
            loader(path)
        messages.append(str(info.value).replace(str(path), "<file>").split(" (known")[0])
        data["train"].pop("learning_rate")
        data["train"]["lr"] = "fast"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(ConfigError) as info:
            loader(path)
        messages.append(str(info.value).replace(str(path), "<file>"))
    assert messages[0] == messages[2] == "<file>: train.learning_rate: unknown key"
    assert messages[1] == messages[3] == "<file>: train.lr: must be a number, got 'fast'"


# ---------------------------------------------------------------------------- EMA
def test_ema_update_params_and_buffers(tiny):
    ema = create_ema(tiny)
    assert all(not p.requires_grad for p in ema.parameters())
    ema_before = {k: v.clone() for k, v in ema.state_dict().items()}
    _perturb(tiny, seed=3)
    with torch.no_grad():
        tiny.pos_embed_xy.add_(1.0)  # a buffer: must be copied, not averaged
    decay = 0.9
    update_ema(ema, tiny, decay=decay)
    for name, param in tiny.named_parameters():
        expected = decay * ema_before[name] + (1 - decay) * param
        assert torch.allclose(dict(ema.named_parameters())[name], expected, atol=1e-7), name
    assert torch.equal(ema.pos_embed_xy, tiny.pos_embed_xy)
    update_ema(ema, tiny, decay=0.0)
    for name, value in tiny.state_dict().items():
        assert torch.equal(ema.state_dict()[name], value), name


# ---------------------------------------------------------------------------- learning
@pytest.mark.slow
def test_tiny_sit_memorises_fixed_pairs():
    """Flow matching on random data has an irreducible floor (E[x1 | x_t] is ambiguous at small t),
    so train and evaluate on the same fixed (latent, t, noise) pairs: 8 latents x 2 pairs. The
    loss starts at E|x1 - x0|^2 = 2 (zero output) and must drop at least 10x."""
    torch.manual_seed(0)
    model = TriplaneSiT.from_config(CONFIGS / "tiny.yaml")
    g = torch.Generator().manual_seed(0)
    latents = random_triplane(8, model.grid, model.in_channels, g).flatten()  # (8, 320, 4)
    x1 = latents.repeat(2, 1, 1)
    t = torch.rand(x1.shape[0], generator=g)
    x0 = torch.randn(x1.shape, generator=g)

    def evaluate():
        with torch.no_grad():
            return training_loss(model, x1, t=t, x0=x0)[0].item()

    initial = evaluate()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    for _ in range(200):
        loss, _ = training_loss(model, x1, t=t, x0=x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    final = evaluate()
    print(f"tiny SiT memorisation: loss {initial:.4f} -> {final:.6f} ({initial / final:.0f}x)")
    assert initial == pytest.approx(2.0, rel=0.1)
    assert final < initial / 10
