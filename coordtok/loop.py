"""Pieces shared by the training loops (tokenizer and SiT): the data loader over a
:class:`~coordtok.train.GlobalBatchSampler`, the TensorBoard writer, and the non-finite-loss guard."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch


def split_global_batch(batch_size: int, grad_accum: int, world: int, source: str) -> tuple[int, int]:
    """``(per-process micro-batch, global micro-batch)`` of a global batch split over processes and
    accumulation steps; a batch that does not divide is a one-line config error."""
    from .config import ConfigError

    if batch_size % (world * grad_accum):
        raise ConfigError(f"{source}: train.batch_size ({batch_size}) is not divisible by processes ({world}) "
                          f"x grad_accum ({grad_accum})")
    return batch_size // (world * grad_accum), batch_size // grad_accum


def make_run_dir(run_dir: Path, is_main: bool) -> None:
    """Create the run folder on the main process; a folder that cannot be made is a one-line error."""
    if not is_main:
        return
    from .checkpoint import CheckpointError

    try:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"{run_dir}: cannot create the output folder ({e.strerror})") from None


class TrainingDiverged(RuntimeError):
    """Too many consecutive non-finite losses; a checkpoint of the last good state was written."""


def step_loader(dataset, batch_sampler, num_workers: int, device: torch.device):
    """An iterator of this rank's micro-batches, in the sampler's (resumable) order."""
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=batch_sampler, num_workers=num_workers, pin_memory=device.type == "cuda",
        prefetch_factor=2 if num_workers > 0 else None,
    )
    return iter(loader)


def tensorboard_writer(run_dir: Path, is_main: bool):
    """A SummaryWriter in ``run_dir/tb`` on the main process, None elsewhere."""
    if not is_main:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(Path(run_dir) / "tb"))


class NonFiniteGuard:
    """Skips optimizer steps whose loss is NaN/inf on any rank; stops after ``max_bad`` in a row."""

    def __init__(self, accelerator, max_bad: int, hint: str):
        self.accelerator, self.max_bad, self.hint = accelerator, max_bad, hint
        self.in_a_row = 0

    def step_ok(self, finite: bool, step: int, optimizer, save) -> bool:
        """True when the step may be applied. ``save(step)`` writes the last good state before stopping."""
        # Every rank must take the same decision, or DDP would deadlock on the next all-reduce.
        flag = torch.tensor([0.0 if finite else 1.0], device=self.accelerator.device)
        if bool(self.accelerator.reduce(flag, reduction="sum").item() == 0):
            self.in_a_row = 0
            return True
        optimizer.zero_grad(set_to_none=True)
        self.in_a_row += 1
        warnings.warn(f"step {step + 1}: non-finite loss, step skipped ({self.in_a_row} in a row)", stacklevel=2)
        if self.in_a_row >= self.max_bad:
            where = save(step)
            raise TrainingDiverged(
                f"{self.in_a_row} consecutive non-finite losses at step {step + 1}; stopped. The last good state is "
                f"in {where}. {self.hint} and --resume.")
        return False


def close_run(bar, writer, on_finish, model, accelerator) -> None:
    """End of a training loop: close the progress bar and TensorBoard, then call
    ``on_finish(model, accelerator)`` on every process (tests compare the weights each one holds)."""
    bar.close()
    if writer is not None:
        writer.close()
    if on_finish is not None:
        on_finish(model, accelerator)
