"""The one table of kinds (coordtok/kinds.py): every row resolves, and every tokenizer builds,
trains a step and reconstructs a clip through the table alone -- what `coordtok train`,
`eval-recon`, `profile` and the demo do."""

import pytest
import torch

from coordtok.config import ConfigError
from coordtok.kinds import KINDS, ROOT, get_kind, kind_of_config, tokenizers
from coordtok.loop import Task, fit
from eval.tokenizers import Reconstructor, load_reconstructor, protocol_variants

ENTRIES = ("config", "model_config", "model", "task", "reconstructor", "profile", "converter")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: a second OpenMP thread on a shared 2-core CPU only adds hand-off cost."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_table_lists_every_model_the_project_has():
    assert [k.name for k in tokenizers()] == ["coordtok", "magvit2", "promag", "regen"]
    assert KINDS["sit"].role == "generator"


@pytest.mark.parametrize("name", sorted(KINDS))
def test_every_entry_resolves_to_what_it_names(name):
    kind = KINDS[name]
    for entry in ENTRIES:
        if getattr(kind, entry) is not None:
            assert callable(kind.resolve(entry)), (name, entry)
    assert issubclass(kind.resolve("task"), Task) and kind.resolve("task").kind == name
    assert kind_of_config(ROOT / kind.example).name == (
        name if name != "sit" else "coordtok"
    )  # SiT files have no kind:
    if kind.role == "tokenizer":
        assert kind.reconstructor is not None and kind.profile is not None
        assert issubclass(kind.resolve("reconstructor").__self__, Reconstructor)


def test_unknown_kinds_and_roles_are_one_line_errors(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"x.yaml: kind: 'vqgan' is not a tokenizer this project has \(known: coordtok, "
        r"magvit2, promag, regen",
    ):
        get_kind("vqgan", "x.yaml", role="tokenizer")
    with pytest.raises(ConfigError, match="'sit' is not a tokenizer"):
        get_kind("sit", "x.yaml", role="tokenizer")
    assert get_kind(None).name == "coordtok"
    with pytest.raises(ConfigError, match="CoordTok-SiT has no reconstructor"):
        KINDS["sit"].resolve("reconstructor")


# A short run of each tokenizer's example config: one clip's worth of data, fp32, one step.
RUNS = {
    "coordtok": {
        "train": {"batch_size": 1, "num_coords": 64},
        "model": {"frames": 16, "latent_t": 8},
        "data": {"names": ["bikes"], "frame_range": [0, 16], "frames": 16},
    },
    "magvit2": {
        "train": {"batch_size": 1},
        "model": {"frames": 9, "size": 32},
        "data": {"kind": "samples", "names": ["bikes"], "frame_range": [0, 9], "frames": 9, "size": 32},
    },
    "promag": {
        "train": {"batch_size": 1},
        "model": {"size": 32},
        "data": {"kind": "samples", "names": ["bikes"], "frame_range": [0, 17], "size": 32},
    },
    "regen": {
        "train": {"batch_size": 1, "extend_prob": 0.0},
        "model": {"size": 32},
        "data": {"kind": "samples", "names": ["bikes"], "frame_range": [0, 9], "frames": 9, "size": 32},
    },
}


@pytest.mark.slow
@pytest.mark.parametrize("name", [k.name for k in tokenizers()])
def test_each_tokenizer_builds_trains_a_step_and_reconstructs_through_the_table(name, tmp_path):
    kind = KINDS[name]
    over = RUNS[name]
    config = ROOT / kind.example
    cfg = kind_of_config(config, role="tokenizer").load_config(
        config,
        {
            **over,
            "val_data": None,
            "train": {
                "max_steps": 1,
                "out_dir": str(tmp_path / "run"),
                "log_every": 1,
                "ckpt_every": 1,
                "mixed_precision": "no",
                "val_every": 0,
                "num_workers": 0,
                **over["train"],
            },
            "data": {"num_workers": 0, **over["data"]},
        },
    )
    task = kind.resolve("task")(cfg)
    result = fit(task, progress=False)
    assert result["step"] == 1 and torch.isfinite(torch.tensor(result["loss"]))

    frames = cfg.model.frames
    video = torch.rand(1, 3, frames, cfg.model.size, cfg.model.size) * 2 - 1
    for options in protocol_variants(tmp_path / "run"):
        tok = load_reconstructor(tmp_path / "run", **options)
        assert isinstance(tok, kind.resolve("reconstructor").__self__)
        rec, boundaries = tok.reconstruct(video)
        assert rec.shape == video.shape and bool(torch.isfinite(rec).all()) and rec.abs().max() <= 1
        assert tok.tokens(frames) > 0


def test_protocol_variants_come_from_the_reconstructors():
    from eval.tokenizers import CoordTokReconstructor, ProMAGReconstructor, RegenReconstructor

    assert ProMAGReconstructor.protocols == {"blend": ("linear", "drop")}
    assert RegenReconstructor.protocols == {"extend": (True, False)}
    assert CoordTokReconstructor.protocols == {}
