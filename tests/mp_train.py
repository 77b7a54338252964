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


def save_weights(out: Path):
    def hook(model, accelerator):
        torch.save(model.state_dict(), out / f"rank{accelerator.process_index}.pt")
    return hook


def save_first_gradients(out: Path):
    """The first step's gradients, after DDP's all-reduce and before the optimizer, per rank and per
    phase: ``grads<rank>.pt`` for the model, ``<phase>_grads<rank>.pt`` for a later phase (a
    discriminator)."""
    import os

    def hook(step, modules):
        if step == 0:
            rank = int(os.environ.get("RANK", 0))
            for phase, module in modules.items():
                grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
                torch.save(grads, out / (f"grads{rank}.pt" if phase == "model" else f"{phase}_grads{rank}.pt"))
    return hook


def main(kind: str, out: str, steps: int, latents: str | None = None) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if kind == "tokenizer":
        from coordtok.config import load_tokenizer_config
        from coordtok.train import train

        cfg = load_tokenizer_config("configs/tokenizer/tiny.yaml", {
            "train": {"max_steps": steps, "out_dir": str(out / "run"), "batch_size": 4, "num_coords": 256,
                      "log_every": 1, "ckpt_every": 10 ** 9, "val_every": 10 ** 9, "mixed_precision": "no"},
            "data": {"names": ["bikes"], "frame_range": [0, 140]}, "val_data": None})
        train(cfg, progress=False, on_finish=save_weights(out), on_gradients=save_first_gradients(out))
    elif kind == "magvit2":
        from coordtok.baselines.train import load_magvit2_run_config, train_baseline

        # the GAN with R1 (a double backward through the DDP-wrapped discriminator) and LeCAM on
        cfg = load_magvit2_run_config("configs/baselines/magvit2-tiny.yaml", {
            "model": {"frames": 9, "size": 32, "disc_base_channels": 8, "disc_channel_multipliers": [1, 2, 2]},
            "train": {"max_steps": steps, "out_dir": str(out / "run"), "batch_size": 4, "gan_weight": 0.1,
                      "r1_weight": 10.0, "lecam_weight": 0.001, "log_every": 1, "ckpt_every": 10 ** 9,
                      "val_every": 10 ** 9, "mixed_precision": "no"},
            "data": {"kind": "samples", "names": ["bikes"], "frame_range": [0, 140], "frames": 9, "size": 32,
                     "num_workers": 0}, "val_data": None})
        train_baseline(cfg, progress=False, on_finish=save_weights(out), on_gradients=save_first_gradients(out))
    elif kind == "regen":
        from sit.regen_train import load_regen_run_config, train_regen

        cfg = load_regen_run_config("configs/baselines/regen-tiny.yaml", {
            "model": {"size": 32},
            "train": {"max_steps": steps, "out_dir": str(out / "run"), "batch_size": 4, "extend_prob": 0.5,
                      "log_every": 1, "ckpt_every": 10 ** 9, "val_every": 10 ** 9, "mixed_precision": "no"},
            "data": {"kind": "samples", "names": ["bikes"], "frame_range": [0, 140], "size": 32, "num_workers": 0},
            "val_data": None})
        train_regen(cfg, progress=False, on_finish=save_weights(out), on_gradients=save_first_gradients(out))
    else:
        from sit.config import load_sit_run_config
        from sit.train import train_sit

        cfg = load_sit_run_config("configs/sit/tiny.yaml", {"train": {
            "max_steps": steps, "out_dir": str(out / "run"), "batch_size": 4, "ckpt_every": 10 ** 9,
            "sample_every": 0, "log_every": 1, "mixed_precision": "no"}})
        train_sit(cfg, latents, progress=False, on_finish=save_weights(out), on_gradients=save_first_gradients(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else None)
