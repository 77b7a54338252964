"""Two runs in one process, for tests/test_rank_agreement.py: a ``poisoned`` run whose loss of one
phase is made NaN on one rank only, once, at one step; then a ``reference`` run in which that
step's batch is simply not in the data stream. Writes per rank ``<run>/rank<r>.pt`` (the final
weights of every trained module) and ``<run>/warnings<r>.txt`` (the guard's messages).

    python tests/mp_nonfinite.py KIND OUT BAD_RANK BAD_STEP PHASE [LATENTS]

The injection is a wrapper around the task class's ``loss`` installed here, in the test's own
process: nothing in the project's code knows about it.
"""

import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STEPS = 3


def poison_once(task_cls, rank: int, step: int, phase: str):
    """Make ``task_cls.loss`` return a NaN loss the first time ``phase`` runs step ``step`` on ``rank``."""
    import os

    real, fired = task_cls.loss, []

    def loss(self, phase_, batch, ctx):
        out = real(self, phase_, batch, ctx)
        if (
            not fired
            and phase_ == phase
            and ctx.step == step
            and ctx.micro == 0
            and int(os.environ.get("RANK", 0)) == rank
        ):
            fired.append(True)
            out["loss"] = out["loss"] * float("nan")
        return out

    task_cls.loss = loss
    return real


def skip_batch(step: int):
    """The data stream without global micro-batch ``step`` (grad_accum 1): what a run sees when
    that batch is dropped."""
    from coordtok.loop import GlobalBatchSampler

    real = GlobalBatchSampler.indices
    GlobalBatchSampler.indices = lambda self, m: real(self, m + (m >= step))
    return real


def run(kind: str, out: Path, latents: str | None):
    from coordtok.loop import fit

    out.mkdir(parents=True, exist_ok=True)
    common = {
        "max_steps": STEPS,
        "out_dir": str(out / "run"),
        "batch_size": 4,
        "log_every": 1,
        "ckpt_every": 10**9,
        "mixed_precision": "no",
    }
    if kind == "tokenizer":
        from coordtok.config import load_tokenizer_config
        from coordtok.train import TokenizerTask

        task = TokenizerTask(
            load_tokenizer_config(
                "configs/tokenizer/tiny.yaml",
                {
                    "train": {**common, "num_coords": 256, "val_every": 10**9},
                    "data": {"names": ["bikes"], "frame_range": [0, 140]},
                    "val_data": None,
                },
            )
        )
    elif kind == "magvit2":
        from baselines.train import MagvitV2Task, load_magvit2_run_config

        task = MagvitV2Task(
            load_magvit2_run_config(
                "configs/baselines/magvit2-tiny.yaml",
                {
                    "model": {"frames": 9, "size": 32, "disc_base_channels": 8, "disc_channel_multipliers": [1, 2, 2]},
                    "train": {
                        **common,
                        "gan_weight": 0.1,
                        "r1_weight": 10.0,
                        "lecam_weight": 0.001,
                        "val_every": 10**9,
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
        )
    else:
        from sit.config import load_sit_run_config
        from sit.train import SiTTask

        task = SiTTask(load_sit_run_config("configs/sit/tiny.yaml", {"train": {**common, "val_every": 0}}), latents)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(task, progress=False)
    rank = task.accelerator.process_index
    torch.save(
        {f"{name}.{k}": v for name, m in task.modules.items() for k, v in m.state_dict().items()},
        out / f"rank{rank}.pt",
    )
    (out / f"warnings{rank}.txt").write_text(
        "\n".join(str(w.message) for w in caught if "non-finite" in str(w.message))
    )


def main(kind: str, out: str, bad_rank: int, bad_step: int, phase: str, latents: str | None = None) -> None:
    out = Path(out)
    if kind == "tokenizer":
        from coordtok.train import TokenizerTask as task_cls
    elif kind == "magvit2":
        from baselines.train import MagvitV2Task as task_cls
    else:
        from sit.train import SiTTask as task_cls
    real_loss = poison_once(task_cls, bad_rank, bad_step, phase)
    run(kind, out / "poisoned", latents)
    task_cls.loss = real_loss
    if phase == "model":  # the main update skipped: as if the step's batch were not in the stream
        skip_batch(bad_step)
    else:  # only the discriminator's update skipped: as if its loss were NaN on every rank
        for r in (0, 1):
            poison_once(task_cls, r, bad_step, phase)
    run(kind, out / "reference", latents)


if __name__ == "__main__":
    main(
        sys.argv[1],
        sys.argv[2],
        int(sys.argv[3]),
        int(sys.argv[4]),
        sys.argv[5],
        sys.argv[6] if len(sys.argv) > 6 else None,
    )
