"""Resume a tiny tokenizer run under ``accelerate launch`` with each rank on its own ``out_dir``
(``BASE/node<rank>``): nodes that do not share the run folder, for tests/test_resume_decided.py.
Writes ``BASE/rank<r>.pt`` (the final weights) on success; a project error is one line on
stderr and exit status 2, as the command line does.

    python tests/mp_resume.py BASE MAX_STEPS
"""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def config(out_dir: Path, steps: int):
    from coordtok.config import load_tokenizer_config

    return load_tokenizer_config(
        "configs/tokenizer/tiny.yaml",
        {
            "train": {
                "max_steps": steps,
                "out_dir": str(out_dir),
                "batch_size": 4,
                "num_coords": 256,
                "log_every": 1,
                "ckpt_every": 1,
                "keep_checkpoints": 10,
                "val_every": 10**9,
                "mixed_precision": "no",
            },
            "data": {"names": ["bikes"], "frame_range": [0, 140]},
            "val_data": None,
        },
    )


def main(base: str, steps: int) -> int:
    from coordtok.errors import CoordTokError
    from coordtok.loop import fit
    from coordtok.train import TokenizerTask

    base = Path(base)
    rank = int(os.environ.get("RANK", 0))

    try:
        task = TokenizerTask(config(base / f"node{rank}", steps))
        fit(task, resume=True, progress=False)
        torch.save(task.modules["model"].state_dict(), base / f"rank{rank}.pt")
    except CoordTokError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
