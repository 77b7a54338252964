"""Run a few training steps of a tokenizer, SiT, MAGVIT-v2 (GAN, R1, LeCAM on) or REGEN, then save the
weights this process holds (rank<r>.pt) and its first step's gradients.

Launched by tests/test_multiprocess.py either plainly (one process) or through
``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2`` (two CPU processes over gloo).
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def fit_and_save(task, out: Path) -> None:
    """``fit(task)``, then this process's weights (``rank<r>.pt``) and its first step's gradients,
    after DDP's all-reduce and before the optimizer, per phase: ``grads<r>.pt`` for the model,
    ``<phase>_grads<r>.pt`` for a later phase (a discriminator)."""
    from helpers import StepRecorder

    from coordtok.loop import fit

    with StepRecorder(task) as recorder:
        fit(task, progress=False)
    rank = task.accelerator.process_index
    torch.save(task.modules["model"].state_dict(), out / f"rank{rank}.pt")
    for phase, grads in recorder.grads.items():
        torch.save(grads, out / (f"grads{rank}.pt" if phase == "model" else f"{phase}_grads{rank}.pt"))


def main(kind: str, out: str, steps: int, latents: str | None = None) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if kind == "tokenizer":
        from coordtok.config import load_tokenizer_config
        from coordtok.train import TokenizerTask

        cfg = load_tokenizer_config(
            "configs/tokenizer/tiny.yaml",
            {
                "train": {
                    "max_steps": steps,
                    "out_dir": str(out / "run"),
                    "batch_size": 4,
                    "num_coords": 256,
                    "log_every": 1,
                    "ckpt_every": 10**9,
                    "val_every": 10**9,
                    "mixed_precision": "no",
                },
                "data": {"names": ["bikes"], "frame_range": [0, 140]},
                "val_data": None,
            },
        )
        fit_and_save(TokenizerTask(cfg), out)
    elif kind == "magvit2":
        from baselines.train import MagvitV2Task, load_magvit2_run_config

        # the GAN with R1 (a double backward through the DDP-wrapped discriminator) and LeCAM on
        cfg = load_magvit2_run_config(
            "configs/baselines/magvit2-tiny.yaml",
            {
                "model": {"frames": 9, "size": 32, "disc_base_channels": 8, "disc_channel_multipliers": [1, 2, 2]},
                "train": {
                    "max_steps": steps,
                    "out_dir": str(out / "run"),
                    "batch_size": 4,
                    "gan_weight": 0.1,
                    "r1_weight": 10.0,
                    "lecam_weight": 0.001,
                    "log_every": 1,
                    "ckpt_every": 10**9,
                    "val_every": 10**9,
                    "mixed_precision": "no",
                },
                "data": {
                    "kind": "samples",
                    "names": ["bikes"],
                    "frame_range": [0, 140],
                    "frames": 9,
                    "size": 32,
                    "num_workers": 0,
                },
                "val_data": None,
            },
        )
        fit_and_save(MagvitV2Task(cfg), out)
    elif kind == "regen":
        from baselines.regen_train import RegenTask, load_regen_run_config

        cfg = load_regen_run_config(
            "configs/baselines/regen-tiny.yaml",
            {
                "model": {"size": 32},
                "train": {
                    "max_steps": steps,
                    "out_dir": str(out / "run"),
                    "batch_size": 4,
                    "extend_prob": 0.5,
                    "log_every": 1,
                    "ckpt_every": 10**9,
                    "val_every": 10**9,
                    "mixed_precision": "no",
                },
                "data": {"kind": "samples", "names": ["bikes"], "frame_range": [0, 140], "size": 32, "num_workers": 0},
                "val_data": None,
            },
        )
        fit_and_save(RegenTask(cfg), out)
    else:
        from sit.cache import read_index
        from sit.config import load_sit_run_config
        from sit.train import SiTTask

        # a cache of several classes trains class-conditionally, with a label dropout high enough
        # that a 3-step run drops labels on both ranks
        classes = read_index(latents).get("classes") or []
        model = {"num_classes": len(classes), "class_dropout_prob": 0.5} if len(classes) > 1 else {}
        cfg = load_sit_run_config(
            "configs/sit/tiny.yaml",
            {
                "model": model,
                "train": {
                    "max_steps": steps,
                    "out_dir": str(out / "run"),
                    "batch_size": 4,
                    "ckpt_every": 10**9,
                    "val_every": 0,
                    "log_every": 1,
                    "mixed_precision": "no",
                },
            },
        )
        fit_and_save(SiTTask(cfg, latents), out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)
