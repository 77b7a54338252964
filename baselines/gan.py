"""GAN and schedule pieces of the MAGVIT-v2 training objective.

MAGVIT-v2 (Yu et al., ICLR 2024, supplement A.2) trains with a non-saturating GAN loss, an R1
gradient penalty, LeCAM regularization and an annealed LFQ entropy weight; numerics as in the
public reimplementation github.com/cofe-ai/O2-MAGVIT2 (``src/losses.py``, ``modeling/ema.py``).
Every function returns an unweighted term: the trainer applies the weights (paper: GAN 0.1, R1 10,
LeCAM 0.001, entropy 0.1 annealed).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["nonsaturating_g_loss", "nonsaturating_d_loss", "r1_penalty", "LeCAM", "entropy_weight"]


def nonsaturating_g_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating generator loss ``mean(softplus(-D(G(z)))) = -mean(log sigmoid(D(G(z))))``."""
    return F.softplus(-fake_logits.float()).mean()


def nonsaturating_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """``mean(softplus(-D(x))) + mean(softplus(D(G(z))))``: the logistic loss with real = 1, fake = 0."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def r1_penalty(real_logits: torch.Tensor, real_inputs: torch.Tensor) -> torch.Tensor:
    """R1 gradient penalty ``mean_b ||d D(x_b) / d x_b||^2`` on real inputs (unweighted).

    ``real_inputs`` must have ``requires_grad=True`` before ``real_logits = D(real_inputs)`` is
    computed. The gradient graph is kept (``create_graph``) so the penalty trains D. The caller
    multiplies by its weight (10 in MAGVIT-v2; some codebases use ``gamma / 2``, say which).
    """
    (grad,) = torch.autograd.grad(real_logits.sum(), real_inputs, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


class LeCAM(nn.Module):
    """LeCAM regularizer (Tseng et al., CVPR 2021) with EMAs of the mean real / fake logits.

    ``reg = mean(relu(D(x) - ema_fake)^2) + mean(relu(ema_real - D(G(z)))^2)`` (the hinge form of
    the MAGVIT code). The EMAs are float32 buffers, so they are saved with the discriminator's
    state dict and a resumed run continues them exactly. They start at 0 and decay at 0.999 (the
    reimplementation's values).
    """

    def __init__(self, decay: float = 0.999):
        super().__init__()
        self.decay = decay
        self.register_buffer("ema_real", torch.zeros((), dtype=torch.float32))
        self.register_buffer("ema_fake", torch.zeros((), dtype=torch.float32))

    @torch.no_grad()
    def update(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> None:
        """``ema <- decay * ema + (1 - decay) * mean(logits)`` for real and fake."""
        self.ema_real.mul_(self.decay).add_((1 - self.decay) * real_logits.detach().float().mean())
        self.ema_fake.mul_(self.decay).add_((1 - self.decay) * fake_logits.detach().float().mean())

    def forward(self, real_logits: torch.Tensor, fake_logits: torch.Tensor, update: bool = True) -> torch.Tensor:
        """The regularizer against the EMAs *before* this batch, then (``update``) fold this batch in."""
        reg = (
            F.relu(real_logits.float() - self.ema_fake).pow(2).mean()
            + F.relu(self.ema_real - fake_logits.float()).pow(2).mean()
        )
        if update:
            self.update(real_logits, fake_logits)
        return reg


def entropy_weight(step: int, weight: float = 0.1, anneal_steps: int = 2000, factor: float = 3.0) -> float:
    """Annealed LFQ entropy weight ``weight * (1 + factor * max(0, 1 - step / anneal_steps))``:
    ``4 x weight`` at step 0, falling linearly to ``weight`` at ``anneal_steps`` and staying there."""
    return weight * (1 + factor * max(0.0, 1 - step / anneal_steps))
