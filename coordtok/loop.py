"""The one training skeleton: :func:`fit` runs every trainer of the project.

A trainer (CoordTok's, the SiT's, the baselines') is a :class:`Task`: the modules it trains, the
loss of one micro-batch, and a few hooks (starting weights, validation, extra checkpoint state).
:func:`fit` owns everything else, once, in four phases that read top to bottom:

1. setup: ``accelerate`` (devices, DDP), the precision (:func:`coordtok.devices.resolve_precision`),
   the split of the global batch over processes and accumulation steps, the locked run folder;
2. restore: a resumed checkpoint (rank 0 decides which; the config's optimizer settings win), or
   the task's starting weights (:meth:`Task.start`);
3. the loop: a :class:`GlobalBatchSampler` makes every batch a pure function of ``(seed, step,
   position in the global batch)``, so N processes x K accumulation steps see the batches of one
   process and a resumed run continues exactly; a step whose loss or gradient is not finite on
   any rank is skipped by every rank (:class:`NonFiniteGuard`);
4. save: atomic checkpoints (:class:`coordtok.checkpoint.RunFolder`) with modules, optimizers,
   EMA, RNG states and the losses that say which checkpoint is known good.

Run settings (EMA, validation cadence, TF32, workers, checkpoints) are the ``train:`` section's:
:class:`coordtok.config.LoopConfig`.
"""

from __future__ import annotations

import abc
import contextlib
import functools
import math
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from . import checkpoint as ckpt
from . import devices
from .activation_checkpointing import set_activation_checkpointing
from .config import ConfigError, LoopConfig
from .devices import resolve_precision
from .errors import CoordTokError
from .seeds import SeedTag, mix_seed

# ---------------------------------------------------------------------------- data order


class GlobalBatchSampler(torch.utils.data.Sampler):
    """Yields this rank's slice of every global micro-batch, forever, from micro-step ``start``.

    The stream of items is a new permutation of the dataset each epoch (seeded by ``(seed,
    epoch)``); an index is encoded as ``epoch * len(dataset) + i`` so the dataset knows which
    epoch's random window to draw, also inside DataLoader workers (:class:`EpochIndexed`).
    """

    def __init__(self, n: int, global_micro_batch: int, rank: int, world: int, seed: int, start: int = 0):
        self.n, self.gmb, self.rank, self.world, self.seed, self.start = n, global_micro_batch, rank, world, seed, start
        self.local = global_micro_batch // world
        self._perms: dict[int, torch.Tensor] = {}

    def indices(self, micro_step: int) -> list[int]:
        """Global (virtual) indices of global micro-batch ``micro_step``."""
        first = micro_step * self.gmb
        out = []
        for pos in range(first, first + self.gmb):
            epoch, k = divmod(pos, self.n)
            out.append(epoch * self.n + int(self._perm(epoch)[k]))
        return out

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.clear()
            g = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
            self._perms[epoch] = torch.randperm(self.n, generator=g)
        return self._perms[epoch]

    def __iter__(self):
        step = self.start
        while True:
            idx = self.indices(step)
            yield idx[self.rank * self.local : (self.rank + 1) * self.local]
            step += 1


class EpochIndexed(torch.utils.data.Dataset):
    """Decodes the sampler's ``epoch * n + i`` into ``dataset.set_epoch(epoch); pick(dataset[i])``
    (``set_epoch`` only where the dataset draws per-epoch randomness, e.g. random windows)."""

    def __init__(self, dataset, pick: Callable[[Any], Any] | None = None):
        self.dataset, self.pick = dataset, pick

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, virtual: int):
        epoch, i = divmod(int(virtual), len(self.dataset))
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        item = self.dataset[i]
        return self.pick(item) if self.pick is not None else item


def split_global_batch(batch_size: int, grad_accum: int, world: int, source: str) -> tuple[int, int]:
    """``(per-process micro-batch, global micro-batch)`` of a global batch split over processes and
    accumulation steps; a batch that does not divide is a one-line config error."""
    if batch_size % (world * grad_accum):
        raise ConfigError(
            f"{source}: train.batch_size ({batch_size}) is not divisible by processes ({world}) "
            f"x grad_accum ({grad_accum})"
        )
    return batch_size // (world * grad_accum), batch_size // grad_accum


# ---------------------------------------------------------------------------- optimizer


def build_optimizer(model: torch.nn.Module, tc: LoopConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on biases and norm gains (1-D
    parameters), as nanoGPT / timm. Group 0 decays, group 1 does not."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": tc.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    # The fused kernel updates every parameter in one pass instead of a Python loop of per-tensor
    # ops (70 ms per CoordTok-S step on the 2-core CPU, BENCHMARKS.md). Meta tensors (FLOP
    # counting) have no fused kernel.
    fused = all(p.device.type in ("cpu", "cuda") for p in params) and bool(params)
    return torch.optim.AdamW(groups, lr=tc.lr, betas=tuple(tc.betas), fused=fused)


def apply_hyperparameters(optimizer: torch.optim.Optimizer, tc: LoopConfig) -> list[str]:
    """Set the config's lr, betas and weight decay on a (restored) optimizer; what changed, as text.

    A resumed optimizer state carries the hyper-parameters it was saved with; the config is what
    the user asks for now (e.g. a lower lr after a divergence), so it wins.
    """
    changes = []
    for k, group in enumerate(optimizer.param_groups):
        want = {"lr": tc.lr, "betas": tuple(tc.betas), "weight_decay": tc.weight_decay if k == 0 else 0.0}
        for key, value in want.items():
            old = tuple(group[key]) if key == "betas" else group[key]
            if old != value:
                if k == 0 or key != "weight_decay":
                    changes.append(f"{key} {_fmt_hp(old)} -> {_fmt_hp(value)}")
                group[key] = value
    return list(dict.fromkeys(changes))


def _fmt_hp(v) -> str:
    return "(" + ", ".join(f"{x:g}" for x in v) + ")" if isinstance(v, tuple) else f"{v:g}"


# ---------------------------------------------------------------------------- the task interface


@dataclass
class StepContext:
    """Where a micro-batch sits: what a loss needs to draw its randomness reproducibly."""

    step: int  # index of the optimizer step being made (0 for the first)
    micro: int  # micro-batch index within the step
    first: int  # position in the global batch of this rank's first item in this micro-batch
    seed: int  # train.seed
    device: torch.device

    def item_seeds(self, batch: int, tag: SeedTag, *extra: int) -> list[int]:
        """One seed per item of the micro-batch: ``mix_seed(seed, step, position, *extra, tag)``."""
        return [mix_seed(self.seed, self.step, self.first + b, *extra, int(tag)) for b in range(batch)]


class Task(abc.ABC):
    """What a trainer tells :func:`fit`: :meth:`dataset` and :meth:`loss`; the other hooks are optional.

    Attributes the trainer sets before :func:`fit`:
        kind: the checkpoint kind, a row of :data:`coordtok.kinds.KINDS`.
        config: the whole run config; ``config.train`` is a :class:`~coordtok.config.LoopConfig`
            (it drives the loop), ``to_dict()`` goes into every checkpoint.
        modules: ``{name: module}`` trained by the run; ``"model"`` is the main one. Each gets an
            AdamW; DDP wraps each.
        phases: the order in which modules are updated within a step (a GAN: the generator,
            then the discriminator); one backward and one optimizer step per phase.

    Set by :func:`fit`: ``accelerator``, ``wrapped`` (the DDP-wrapped modules) and ``ema`` (an
    exponential moving average of ``modules["model"]`` when ``train.ema`` is set: stepped after
    every applied step, checkpointed, restored, started from the weights of :meth:`start`).
    """

    kind: str = "model"
    what: str = "model"  # how messages name this task's checkpoints
    phases: tuple[str, ...] = ("model",)
    num_workers: int = 0  # DataLoader workers when train.num_workers is unset
    hint: str = "Lower train.lr (e.g. --set train.lr=...), set train.max_grad_norm or use fp32"

    def __init__(self):
        self.config = None
        self.modules: dict[str, torch.nn.Module] = {}
        self.wrapped: dict[str, torch.nn.Module] = {}
        self.accelerator = None
        self.ema: torch.nn.Module | None = None

    # -- data
    @abc.abstractmethod
    def dataset(self) -> torch.utils.data.Dataset:
        """The training set, indexed by the sampler's virtual index (wrap in :class:`EpochIndexed`)."""

    def collate_to(self, batch, device: torch.device):
        """Move a DataLoader batch to ``device`` (tensors and dicts of tensors by default)."""
        if isinstance(batch, dict):
            return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        return batch.to(device, non_blocking=True)

    # -- starting weights
    def start(self, log) -> None:
        """A fresh run's starting weights: those of ``train.init_from`` (:meth:`init_from`) when the
        config names one, else the modules as built. A task that starts from another model (a
        grown ProMAG stage from its parent) overrides this."""
        if self.config.train.init_from:
            self.init_from(self.config.train.init_from, log)

    def init_from(self, path: str, log) -> None:
        """Take the weights of checkpoint ``path`` (a model of the same architecture)."""
        raise ConfigError(f"train.init_from is not supported for {self.kind} runs")

    def setup(self) -> None:
        """After the modules are on their device (``self.accelerator`` is set): move helpers
        that are not trained (a loss network, statistics) there too."""

    # -- the step
    @abc.abstractmethod
    def loss(self, phase: str, batch, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Losses of one micro-batch for ``phase``; ``"loss"`` is what is backpropagated (a mean
        over the micro-batch, so the accumulated gradient is that of the global batch's mean)."""

    def after_step(self, step: int) -> None:
        """After every applied optimizer step (and the EMA's); ``step`` counts applied steps."""

    def summarize(self, metrics: dict[str, float]) -> dict[str, float]:
        """Derived figures from the step's averaged metrics (e.g. PSNR from the MSE)."""
        return metrics

    def periodic(self, step: int, log) -> dict[str, float]:
        """Main process only, every ``train.val_every`` steps and at the last (validation, a
        sample look): figures to log."""
        return {}

    # -- checkpoints
    def check_resume(self, state: dict, where: Path) -> None:
        """Refuse a checkpoint that cannot continue this run (e.g. another architecture)."""
        ckpt.check_same_model(
            where, (state.get("config") or {}).get("model"), self.config.to_dict().get("model"), "cannot resume"
        )

    def extra_state(self) -> dict:
        """Checkpoint entries beyond modules, optimizers, EMA and RNG (statistics, ...)."""
        return {}

    def load_extra_state(self, state: dict, log) -> None:
        """Restore :meth:`extra_state` from a resumed checkpoint."""


# ---------------------------------------------------------------------------- pieces of the loop


class TrainingDiverged(CoordTokError, RuntimeError):
    """Too many consecutive non-finite steps; the message names the newest checkpoint known good
    (:func:`known_good`), or says there is none."""


# A state "explodes" when the loss its weights give rose above the run's first loss (that of the
# untrained weights) by more than this many times that loss's size: training lowers a loss from
# where it starts, so a rise of 10x the starting level is divergence, not batch-to-batch noise.
EXPLODING = 10.0


def loss_is_sane(loss: float | None, first: float | None) -> bool:
    """Whether ``loss`` (the loss some weights gave) is finite and not exploding against ``first``
    (the run's first loss; None: unknown, only finiteness is checked)."""
    if loss is None or not math.isfinite(loss):
        return False
    return first is None or not math.isfinite(first) or loss - first <= EXPLODING * abs(first)


def known_good(folder: ckpt.RunFolder, judged: dict[int, float], first: float | None) -> tuple[Path | None, list[str]]:
    """``(the newest checkpoint of the run's lineage known good, the newer ones that are not)``.

    A checkpoint is known good when its weights are all finite (recorded when it was written)
    and the loss those weights gave on the next step's batch (``judged[step]``) is
    :func:`loss_is_sane`. The loss a checkpoint records is that of the batch *before* its update,
    which says nothing about the weights after it (an lr of 1e9 gives a normal loss, then weights
    of 1e9): hence the next step's loss.
    """
    bad = []
    for path in folder.lineage():
        info = ckpt.peek(path) or {}
        if info.get("finite_weights") and loss_is_sane(judged.get(int(info.get("step", -1))), first):
            return path, bad
        bad.append(path.name)
    return None, bad


class NonFiniteGuard:
    """Skips updates whose loss or gradient is NaN/inf on any rank; stops after ``max_bad`` in a row
    (per phase). A step whose main update is skipped changes nothing, so the weights are always
    those of the last step whose loss and gradient were finite; a later phase's failure (a
    discriminator's) skips only that phase's update."""

    def __init__(self, accelerator, max_bad: int, hint: str):
        self.accelerator, self.max_bad, self.hint = accelerator, max_bad, hint
        self.in_a_row: dict[str, int] = {}  # per phase: a discriminator failing alone counts too

    def step_ok(self, finite: bool, step: int, what: str, advise, phase: str = "model") -> bool:
        """True when ``phase``'s update may be applied. ``advise()``: what the stop message says
        to do (which checkpoint is good). Nothing is written on a stop: the weights in memory
        are those of the last applied step, which already gave the bad losses."""
        # Every rank must take the same decision, or DDP would deadlock on the next all-reduce.
        flag = torch.tensor([0.0 if finite else 1.0], device=self.accelerator.device)
        if bool(self.accelerator.reduce(flag, reduction="sum").item() == 0):
            self.in_a_row[phase] = 0
            return True
        n = self.in_a_row[phase] = self.in_a_row.get(phase, 0) + 1
        ranks = (
            f" on every rank (this is rank {self.accelerator.process_index})"
            if self.accelerator.num_processes > 1
            else ""
        )
        warnings.warn(f"step {step + 1}: non-finite {what}, update skipped{ranks} ({n} in a row)", stacklevel=2)
        if n >= self.max_bad:
            raise TrainingDiverged(
                f"{n} consecutive non-finite steps at step {step + 1}; stopped (no checkpoint "
                f"written: these weights give non-finite values). {advise()}"
            )
        return False


def ranks_not_finite(accelerator, loss: torch.Tensor) -> list[int]:
    """The ranks whose ``loss`` is not finite (the same list on every rank: one all-reduce of a
    flag per rank, which every rank must call); ``[]`` when all are finite."""
    world = accelerator.num_processes
    flags = torch.zeros(world, device=loss.device)
    flags[accelerator.process_index] = float(not bool(torch.isfinite(loss.detach()).all()))
    if world > 1:
        flags = accelerator.reduce(flags, reduction="sum")
    return [r for r, bad in enumerate(flags.tolist()) if bad]


def grads_finite(module: torch.nn.Module) -> bool:
    """Whether every gradient of ``module`` is finite (one fused norm over all of them)."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if not grads:
        return True
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads, norm_type=2.0)))


def step_loader(dataset, batch_sampler, num_workers: int, device: torch.device):
    """An iterator of this rank's micro-batches, in the sampler's (resumable) order."""
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        prefetch_factor=2 if num_workers > 0 else None,
    )
    return iter(loader)


def tensorboard_writer(run_dir: Path, is_main: bool):
    """A SummaryWriter in ``run_dir/tb`` on the main process, None elsewhere."""
    if not is_main:
        return None
    from torch.utils.tensorboard import SummaryWriter

    from .fileio import note_written

    tb = Path(run_dir) / "tb"
    before = set(tb.glob("events.out.tfevents.*"))
    writer = SummaryWriter(str(tb))  # opens its event file (named by time, host and pid) at once
    for path in set(tb.glob("events.out.tfevents.*")) - before:
        note_written(path)
    return writer


def on_main_then_all(accelerator, fn) -> None:
    """Run ``fn`` on the main process; a :class:`CoordTokError` it raises is raised on every rank."""
    message = None
    if accelerator.is_main_process:
        try:
            fn()
        except CoordTokError as e:
            message = str(e)
    if accelerator.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        message = broadcast_object_list([message])[0]
    if message is not None:
        raise ckpt.CheckpointError(message)


def _resume_on_every_rank(accelerator, folder: ckpt.RunFolder, resume) -> dict | None:
    """The checkpoint state this process continues from (None: a fresh start).

    Rank 0 decides the file and the step (:meth:`coordtok.checkpoint.RunFolder.resume_state`);
    every other rank loads that same file -- by name inside its own ``out_dir`` when the file is
    in the run folder (nodes that do not share the folder each hold a copy), else by its path --
    and never picks its own newest one, which on a node with other files would start the ranks
    at different steps. A rank that cannot read it, or reads another step, stops every rank with
    one line naming the rank and the file.
    """
    if accelerator.num_processes == 1:
        return folder.resume_state(resume)
    from accelerate.utils import broadcast_object_list, gather_object

    rank, state, decided = accelerator.process_index, None, [None, None, None, None]
    if accelerator.is_main_process:
        try:
            state = folder.resume_state(resume)
            where = folder.resumed_from
            name = (
                None
                if state is None
                else (where.name if where.parent.resolve() == folder.path.resolve() else str(where.resolve()))
            )
            decided = [None, name, None if state is None else int(state["step"]), folder.run_id]
        except CoordTokError as e:
            decided = [str(e), None, None, None]
    message, name, step, folder.run_id = broadcast_object_list(decided)
    if message is not None:
        raise ckpt.CheckpointError(message)
    error = None
    if not accelerator.is_main_process and name is not None:
        path = Path(name) if Path(name).is_absolute() else folder.path / name
        why = None
        try:
            state = folder.load_decided(path)
            if int(state.get("step", -1)) != step:
                why = f"{path}: holds step {state.get('step')}"
        except CoordTokError as e:
            why = str(e)
        if why is not None:
            error = (
                f"rank {rank}: {why}, but rank 0 resumes from {name} (step {step}); every process must "
                f"read the same checkpoint (a train.out_dir shared by all nodes, or that file copied to each)"
            )
    errors = [e for e in gather_object([error]) if e]
    if errors:
        raise ckpt.CheckpointError(errors[0])
    return state


def _mean_over_ranks(accelerator, sums: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: accelerator.reduce(v, reduction="mean").item() for k, v in sums.items()}


# ---------------------------------------------------------------------------- fit


def fit(
    task: Task,
    *,
    resume: bool | str | Path | None = None,
    progress: bool = True,
    config_text: str | None = None,
    log=None,
) -> dict:
    """Train ``task`` as ``task.config.train`` says; returns ``{"step", <last metrics>, "run_dir",
    "checkpoint"}``. The trained weights stay in ``task.modules`` (and ``task.ema``).

    Args:
        resume: ``True`` continues from the newest readable checkpoint of ``train.out_dir`` (a
            fresh start when there is none), a path continues from that file; falsy starts fresh,
            which an ``out_dir`` holding checkpoints refuses.
        config_text: the config file's text, stored in every checkpoint.
        log: ``fn(message)`` for notes (default: stderr, above the progress bar).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    from tqdm.auto import tqdm

    from .ema import create_ema, update_ema

    tc = task.config.train
    log = log or (lambda msg: tqdm.write(msg, file=sys.stderr))

    # -- setup: devices, precision, the batch split, the run folder --------------------------
    # Autocast and the fp16 loss scaler are ours, not accelerate's: its mixed-precision setting is
    # process-wide state that cannot change between runs, and a demo or a test suite trains
    # several models in one process (e.g. an fp32 tokenizer, then a bf16 SiT).
    accelerator = Accelerator(
        mixed_precision="no", kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)]
    )
    # The device accelerate runs on, not whether a GPU exists: ACCELERATE_USE_CPU=1 on a GPU
    # machine trains on its CPUs, in the CPU's precision.
    device = accelerator.device
    precision = resolve_precision(tc.mixed_precision, device.type, log)
    autocast = functools.partial(
        torch.autocast,
        device.type,
        dtype=torch.bfloat16 if precision == "bf16" else torch.float16,
        enabled=precision != "no",
    )
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tc.allow_tf32
    task.accelerator = accelerator
    is_main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    local_batch, global_micro = split_global_batch(tc.batch_size, tc.grad_accum, world, task.config.source)
    folder = ckpt.RunFolder(tc.out_dir, task.kind, is_main, log)
    # The main process takes the lock; if it cannot, every rank stops with its message (a rank
    # that went on alone would wait forever in DDP's first all-reduce).
    on_main_then_all(accelerator, folder.acquire)
    try:
        # -- restore: a checkpoint of this run, or the starting weights ---------------------
        if tc.ema is not None:
            task.ema = create_ema(task.modules["model"])
        state = _resume_on_every_rank(accelerator, folder, resume)
        if state is not None:
            task.check_resume(state, folder.resumed_from)
        else:
            task.start(log)
        optimizers = {name: build_optimizer(task.modules[name], tc) for name in task.phases}
        step = 0
        if state is not None:
            step = _restore(task, optimizers, state, tc, log if is_main else (lambda msg: None))
        if is_main:
            log(
                f"precision: {'fp32' if precision == 'no' else precision} "
                f"({'CUDA' if device.type == 'cuda' else devices.cpu_info()['model']})"
            )
        blocks = set_activation_checkpointing(task.modules["model"], tc.activation_checkpointing)
        if is_main and tc.activation_checkpointing:
            log(f"activation checkpointing: {blocks} blocks recompute their activations in the backward")

        names = list(task.modules)
        prepared = accelerator.prepare(*[task.modules[n] for n in names], *[optimizers[n] for n in task.phases])
        prepared = prepared if isinstance(prepared, (list, tuple)) else [prepared]
        task.wrapped = dict(zip(names, prepared[: len(names)]))
        optimizers = dict(zip(task.phases, prepared[len(names) :]))
        if task.ema is not None:
            task.ema.to(device)
        task.setup()
        if state is not None:
            if state.get("scaler") is not None and scaler.is_enabled():
                scaler.load_state_dict(state["scaler"])
            ckpt.restore_rng(state, rank, world, log if is_main else None)

        dataset = task.dataset()
        sampler = GlobalBatchSampler(len(dataset), global_micro, rank, world, tc.seed, start=step * tc.grad_accum)
        workers = tc.num_workers if tc.num_workers is not None else task.num_workers
        batches = step_loader(dataset, sampler, workers, device)
        writer = tensorboard_writer(folder.path, is_main)
        last: dict[str, float] = dict((state or {}).get("metrics") or {})  # a finished run reports them
        last_ckpt = None
        # The loss the weights after `step` applied steps gave (the first batch tried on them):
        # what says whether a checkpoint of those weights is good (known_good). Carried in every
        # checkpoint (the newest entries), with the run's first loss, for the runs resumed later.
        judged: dict[int, float] = {int(k): float(v) for k, v in ((state or {}).get("judged") or {}).items()}
        first_loss = (state or {}).get("first_loss")

        def advise() -> str:
            return advice(folder, judged, first_loss, task.hint) if is_main else task.hint

        def save(step_: int) -> Path | None:
            # Every process's RNG states (each draws its own; on a GPU each from its own device),
            # gathered on every rank: a collective, so every rank calls save().
            rngs = [ckpt.rng_state()]
            if world > 1:
                from accelerate.utils import gather_object

                rngs = gather_object(rngs)
            if not is_main:
                return None
            payload = {
                "kind": task.kind,
                "step": step_,
                **{ckpt.module_key(n): accelerator.unwrap_model(task.wrapped[n]).state_dict() for n in names},
                **{ckpt.optimizer_key(n): opt.state_dict() for n, opt in optimizers.items()},
                "ema": task.ema.state_dict() if task.ema is not None else None,
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "rng": rngs[0],
                **({"rng_ranks": rngs} if world > 1 else {}),
                "config": task.config.to_dict(),
                "config_text": config_text,
                "metrics": dict(last),
                **task.extra_state(),
                "finite_weights": all(bool(torch.isfinite(p).all()) for p in task.modules["model"].parameters()),
                "judged": {k: judged[k] for k in sorted(judged)[-64:]},
                "first_loss": first_loss,
            }
            return folder.save(payload, step_, tc.keep_checkpoints)

        # -- the loop: one optimizer step per phase per step, every rank in step ---------------
        bar = tqdm(
            total=tc.max_steps,
            initial=step,
            disable=not (progress and is_main),
            desc=task.kind,
            dynamic_ncols=True,
            file=sys.stderr,
        )
        guard = NonFiniteGuard(accelerator, tc.max_bad_steps, task.hint)
        for module in task.wrapped.values():
            module.train()
        check_grads = not scaler.is_enabled()  # with a loss scaler, skipped inf-gradient steps are routine
        main = task.phases[0]  # the main module's phase: its update is the step
        tic, done_since_log = time.time(), 0
        while step < tc.max_steps:
            micro_batches = [next(batches) for _ in range(tc.grad_accum)]
            sums: dict[str, torch.Tensor] = {}
            applied = main_loss_finite = True
            for phase in task.phases:
                prefix = "" if phase == main else f"{phase}_"
                module, opt = task.wrapped[phase], optimizers[phase]
                opt.zero_grad(set_to_none=True)  # an earlier phase's backward may have reached this module
                finite = True
                for micro, batch in enumerate(micro_batches):
                    ctx = StepContext(step, micro, micro * global_micro + rank * local_batch, tc.seed, device)
                    batch = task.collate_to(batch, device)
                    sync = contextlib.nullcontext() if micro == tc.grad_accum - 1 else accelerator.no_sync(module)
                    with sync:
                        with autocast():
                            out = task.loss(phase, batch, ctx)
                        # Every rank decides together, before any backward: a rank that skipped
                        # it while the others enter DDP's gradient all-reduce (or the backward
                        # all-reduce of the LFQ entropy) would pair its next collective with the
                        # wrong one (gloo aborts, NCCL hangs).
                        bad_ranks = ranks_not_finite(accelerator, out["loss"])
                        finite = not bad_ranks
                        if finite:
                            scaler.scale(out["loss"].float() / tc.grad_accum).backward()
                    for k, v in out.items():
                        sums[prefix + k] = sums.get(prefix + k, 0.0) + v.detach().float() / tc.grad_accum
                    if not finite:  # (every rank leaves at the same micro-batch: same metric keys)
                        break
                if phase == main:
                    main_loss_finite = finite
                grads_ok = not check_grads or not finite or grads_finite(module)
                what = (
                    "gradient"
                    if finite
                    else "loss" + (f" on rank {', '.join(map(str, bad_ranks))} of {world}" if world > 1 else "")
                )
                if not guard.step_ok(finite and grads_ok, step, f"{phase} {what}", advise, phase):
                    opt.zero_grad(set_to_none=True)
                    if phase == main:  # the main module's update is the step: skip all of it
                        applied = False
                        break
                    continue  # a later phase (a discriminator): its update alone is skipped, the step counts
                scaler.unscale_(opt)  # (a no-op without fp16) so clipping sees true gradients
                if tc.max_grad_norm:
                    sums[prefix + "grad_norm"] = (
                        torch.nn.utils.clip_grad_norm_(module.parameters(), tc.max_grad_norm).detach().float()
                    )
                for group in opt.param_groups:  # the schedule is a function of the step: exact on resume
                    group["lr"] = tc.lr_at(step)
                scaler.step(opt)  # skips the update when an fp16 gradient overflowed
                scaler.update()
                opt.zero_grad(set_to_none=True)
            if not applied:  # (a finite loss whose gradient was not: the weights themselves were fine)
                judged.setdefault(step, float(sums["loss"]) if main_loss_finite else math.nan)
                continue
            step += 1
            done_since_log += 1
            if task.ema is not None:
                update_ema(task.ema, task.modules["model"], tc.ema)
            task.after_step(step)
            last.update(task.summarize(_mean_over_ranks(accelerator, sums)))
            judged.setdefault(step - 1, float(last["loss"]))
            if first_loss is None and math.isfinite(last["loss"]):
                first_loss = float(last["loss"])
            bar.update(1)
            if step % tc.log_every == 0 or step == tc.max_steps:
                rate = done_since_log / max(time.time() - tic, 1e-9)
                bar.set_postfix({k: f"{v:.4g}" for k, v in list(last.items())[:3]} | {"steps_s": f"{rate:.2f}"})
                write_scalars(writer, "train", {**last, "steps_per_s": rate}, step)
                tic, done_since_log = time.time(), 0
            if tc.val_every and (step % tc.val_every == 0 or step == tc.max_steps) and is_main:
                figures = task.periodic(step, log)
                last.update(figures)
                write_scalars(writer, "periodic", figures, step)

            # -- save: atomically, every ckpt_every steps and at the last ------------------------
            if step % tc.ckpt_every == 0 or step == tc.max_steps:
                last_ckpt = save(step)
            accelerator.wait_for_everyone()
        bar.close()
        if writer is not None:
            writer.close()
    finally:
        folder.release()
    return {"step": step, **last, "run_dir": str(folder.path), "checkpoint": str(last_ckpt) if last_ckpt else None}


def _restore(task: Task, optimizers: dict, state: dict, tc: LoopConfig, log) -> int:
    """Load a resumed checkpoint's modules, optimizers (taking the config's hyper-parameters),
    EMA and the task's extra state; returns its step."""
    from .ema import update_ema

    for name, module in task.modules.items():
        module.load_state_dict(state[ckpt.module_key(name)])
    for name, opt in optimizers.items():
        opt.load_state_dict(state[ckpt.optimizer_key(name)])
        changes = apply_hyperparameters(opt, tc)
        if changes:
            log(f"resume: {name} optimizer takes the config's {', '.join(changes)}")
    if task.ema is not None:
        if state.get("ema") is not None:
            task.ema.load_state_dict(state["ema"])
        else:  # a run that starts keeping an EMA on resume starts it from the current weights
            log("resume: the checkpoint has no EMA; starting it from the model's weights")
            update_ema(task.ema, task.modules["model"], 0.0)
    task.load_extra_state(state, log)
    return int(state["step"])


def advice(folder: ckpt.RunFolder, judged: dict[int, float], first_loss: float | None, hint: str) -> str:
    """What a diverged run's stop message tells the user to do: the newest checkpoint known good
    (:func:`known_good`) to resume from with ``hint`` applied, or to start afresh."""
    good, bad = known_good(folder, judged, first_loss)
    newer = f"; newer ones had already diverged: {', '.join(bad)}" if bad else ""
    if good is not None:
        k = int(ckpt.peek(good)["step"])
        was = f", the run's first loss was {first_loss:.4g}" if first_loss is not None else ""
        return (
            f"The newest checkpoint known good is {good} (step {k}: its weights gave a loss of "
            f"{judged[k]:.4g}{was}){newer}. {hint}, then --resume {good}: a resumed run takes "
            f"the config's optimizer settings."
        )
    why = "each one had already diverged: " + ", ".join(bad) if bad else "none was written"
    return f"No checkpoint of this run is known good ({why}). {hint} and start afresh in a new train.out_dir."


def write_scalars(writer, group: str, values: dict, step: int) -> None:
    """The finite numbers of ``values`` as ``group/<name>`` scalars (nothing without a writer)."""
    if writer is None:
        return
    for k, v in values.items():
        if isinstance(v, (int, float)) and math.isfinite(v):
            writer.add_scalar(f"{group}/{k}", v, step)
