"""Train the tiny tokenizer a few steps with or without ``train.activation_checkpointing``, saving
this process's weights and first gradients (tests/mp_train.py's fit_and_save). Launched by
tests/test_activation_checkpointing.py plainly or as two gloo processes (``accelerate launch``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(out: str, steps: int, checkpointing: bool) -> None:
    from mp_train import fit_and_save

    from coordtok.config import load_tokenizer_config
    from coordtok.train import TokenizerTask

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = load_tokenizer_config(
        "configs/tokenizer/tiny.yaml",
        {
            "model": {"frames": 32, "latent_t": 8},
            "train": {
                "max_steps": steps,
                "out_dir": str(out / "run"),
                "batch_size": 4,
                "num_coords": 128,
                "log_every": 1,
                "ckpt_every": 10**9,
                "val_every": 10**9,
                "mixed_precision": "no",
                "activation_checkpointing": checkpointing,
            },
            "data": {"names": ["bikes"], "frame_range": [0, 80], "frames": 32},
            "val_data": None,
        },
    )
    fit_and_save(TokenizerTask(cfg), out)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1")
