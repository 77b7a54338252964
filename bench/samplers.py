"""Samplers at <= 50 network calls against the paper's 250-step Euler-Maruyama.

    python -m bench.samplers [--tiers 1 2] [--dim 10240] [--n 512] [--n2 512] [--all] [--out runs/bench-samplers]

Two tiers, each with samplers of :data:`sit.samplers.SAMPLERS` at <= 50 calls (:data:`CANDIDATES`;
``--all`` adds :data:`MORE`, some at ~25 calls), two seeds each:

* tier 1: the exact velocity of a Gaussian mixture (:class:`sit.mixture.GaussianMixture`, 8 modes,
  unequal weights, per-dimension stds log-uniform in [0.2, 1]) in ``--dim`` dimensions (10240 =
  1280 triplane tokens x 8 channels, the L/2 SiT's input), where the truth is known: a global
  Frechet distance (FD), the modes' weights (total variation) and spreads (RMS distance to the
  mode's mean over its std: 1 is right), and k-NN precision / recall (Kynkaanniemi et al. 2019,
  k = 3);
* tier 2: a tiny CoordTok-SiT trained here on cached latents (:mod:`bench.samplers_tier2`, reused
  from ``--out``): FD and precision / recall in its 320-dimensional normalized latent space.

The goal: a sampler at <= 50 calls whose distance to the 250-step Euler-Maruyama samples
(another seed) is within 2x its own seed-to-seed distance, ``d(S_a, EM_b) <= 2 d(S_a, S_b)``, for
every distance of the tier. Sample sets are cached under ``OUT/sets`` so a rerun only computes
what is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from sit.mixture import GaussianMixture
from sit.samplers import SAMPLERS

REFERENCE = ("sde", 250)
# (sampler, steps): <= 50 network calls each (calls in the table); --all adds more.
CANDIDATES = [
    ("sde", 50),
    ("sde_graded", 50),
    ("heun_sde", 25),
    ("heun_ode", 25),
    ("ab3", 48),
    ("dpmpp_2m", 50),
    ("ddpm", 50),
    ("dpmpp_2m_sde", 50),
    ("heun_ode_mean", 24),
    ("ab2_mean", 49),
    ("ab3_mean", 47),
    ("dpmpp_2m_mean", 49),
]
MORE = [("ab2", 50), ("ab4", 44), ("ab3", 23), ("dpmpp_2m_sde", 25)]
SEEDS = (1, 2, 2)  # the sampler's two sets, and the 250-step Euler-Maruyama set they are compared with


# ---------------------------------------------------------------------------- distances
def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr sqrt(S_a S_b)`` of two sample sets ``(n, D)``.

    With centred ``A`` (n x D) and ``B`` (m x D), ``S_a S_b = A^T A B^T B / ((n - 1)(m - 1))`` has
    the nonzero eigenvalues of ``(A B^T)(A B^T)^T / ((n - 1)(m - 1))``, so ``tr sqrt(S_a S_b)`` is
    the nuclear norm of ``A B^T`` over ``sqrt((n - 1)(m - 1))``: an n x m SVD, not a D x D sqrtm.
    """
    a, b = a.double().flatten(1), b.double().flatten(1)
    ac, bc = a - a.mean(0), b - b.mean(0)
    n, m = len(a), len(b)
    cross = torch.linalg.svdvals(ac @ bc.T).sum() / math.sqrt((n - 1) * (m - 1))
    fd = (a.mean(0) - b.mean(0)).pow(2).sum() + ac.pow(2).sum() / (n - 1) + bc.pow(2).sum() / (m - 1) - 2 * cross
    return float(fd)


def precision_recall(a: torch.Tensor, ref: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """k-NN precision (share of ``a`` inside the union of ``ref``'s k-NN balls) and recall
    (share of ``ref`` inside ``a``'s), Kynkaanniemi et al. 2019."""
    a, ref = a.double().flatten(1), ref.double().flatten(1)

    def radii(x):
        d = torch.cdist(x, x)
        return d.kthvalue(k + 1, dim=1).values  # the point itself is its own 0-th neighbour

    d = torch.cdist(a, ref)  # (n_a, n_ref)
    precision = (d <= radii(ref)[None, :]).any(1).double().mean()
    recall = (d.T <= radii(a)[None, :]).any(1).double().mean()
    return float(precision), float(recall)


def mode_stats(mixture: GaussianMixture, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weights (K,), spreads (K,))``: each mode's share of ``x`` and its RMS distance to the
    mode's mean in units of the mode's std (1 when right; nan for an empty mode)."""
    x = x.double().flatten(1)
    labels = mixture.classify(x)
    k = len(mixture.weights)
    weights = torch.bincount(labels, minlength=k).double() / len(x)
    spreads = torch.stack(
        [((x[labels == j] - mixture.means[j]) / mixture.stds[j]).pow(2).mean().sqrt() for j in range(k)]
    )
    return weights, spreads


def distances(x: torch.Tensor, y: torch.Tensor, mixture: GaussianMixture | None) -> dict:
    """Every distance of a tier between two sample sets: FD, 1 - precision, 1 - recall and, with a
    mixture, the modes' weight TV and the largest spread difference."""
    p, r = precision_recall(x, y)
    out = {"fd": frechet_distance(x, y), "1-precision": 1 - p, "1-recall": 1 - r}
    if mixture is not None:
        (wx, sx), (wy, sy) = mode_stats(mixture, x), mode_stats(mixture, y)
        out["weight_tv"] = float(0.5 * (wx - wy).abs().sum())
        out["spread"] = float((sx - sy).abs().nan_to_num(1.0).max())
    return out


# ---------------------------------------------------------------------------- sample sets
def sample_set(
    cache: Path, tag: str, velocity, shape, n: int, name: str, steps: int, seed: int, batch: int
) -> tuple[torch.Tensor, int, float]:
    """``(samples (n, *shape), network calls per sample, seconds)``; cached under ``cache``."""
    path = cache / f"{tag}-{name}-{steps}-seed{seed}-n{n}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        return saved["x"], int(saved["calls"]), float(saved["seconds"])
    calls = 0

    def counted(x, t):
        nonlocal calls
        calls += 1
        return velocity(x, t)

    noise_g, sde_g = torch.Generator().manual_seed(1000 + seed), torch.Generator().manual_seed(2000 + seed)
    tic, parts = time.perf_counter(), []
    for first in range(0, n, batch):
        noise = torch.randn(min(batch, n - first), *shape, generator=noise_g)
        parts.append(SAMPLERS[name](counted, noise, num_steps=steps, generator=sde_g))
    seconds = time.perf_counter() - tic
    x = torch.cat(parts)
    per_sample_calls = calls // math.ceil(n / batch)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"x": x, "calls": per_sample_calls, "seconds": seconds}, path)
    return x, per_sample_calls, seconds


def run_tier(
    tag: str,
    velocity,
    shape,
    n: int,
    cache: Path,
    mixture: GaussianMixture | None,
    truth=None,
    batch: int = 1024,
    candidates=CANDIDATES,
    seeds=SEEDS,
) -> list[dict]:
    seed_a, seed_b, seed_ref = seeds
    ref_b, _, _ = sample_set(cache, tag, velocity, shape, n, *REFERENCE, seed_ref, batch)
    rows = []
    for name, steps in [REFERENCE, *candidates]:
        a, calls, seconds = sample_set(cache, tag, velocity, shape, n, name, steps, seed_a, batch)
        b, _, _ = sample_set(cache, tag, velocity, shape, n, name, steps, seed_b, batch)
        to_em, self_ = distances(a, ref_b, mixture), distances(a, b, mixture)
        row = {
            "sampler": name,
            "steps": steps,
            "calls": calls,
            "seconds": seconds,
            "to_em250": to_em,
            "seed_to_seed": self_,
            "ratio": {k: to_em[k] / max(self_[k], 1e-12) for k in to_em},
        }
        if truth is not None:
            row["to_truth"] = distances(a, truth, mixture)
        if mixture is not None:
            w, s = mode_stats(mixture, a)
            row["weight_tv_truth"] = float(0.5 * (w - mixture.weights).abs().sum())
            row["spread_err_truth"] = float((s - 1).abs().nan_to_num(1.0).max())
        row["passes"] = calls <= 50 and all(v <= 2 for v in row["ratio"].values())
        rows.append(row)
        print(format_row(row), flush=True)
    return rows


def format_row(row: dict) -> str:
    keys = list(row["to_em250"])
    cells = [f"{row['sampler']}", str(row["steps"]), str(row["calls"])]
    cells += [f"{row['to_em250'][k]:.4g} / {row['seed_to_seed'][k]:.4g} ({row['ratio'][k]:.2f}x)" for k in keys]
    if "to_truth" in row:
        cells += [f"{row['to_truth']['fd']:.4g}", f"{row['weight_tv_truth']:.4f}", f"{row['spread_err_truth']:.4f}"]
    cells.append("yes" if row["passes"] else "no")
    return "| " + " | ".join(cells) + " |"


def header(rows: list[dict]) -> str:
    keys = list(rows[0]["to_em250"])
    names = ["sampler", "steps", "calls"] + [f"{k}: to EM-250 / seed-to-seed (ratio)" for k in keys]
    if "to_truth" in rows[0]:
        names += ["FD to truth", "weight TV to truth", "max spread error"]
    names.append("<= 2x on all")
    return "| " + " | ".join(names) + " |\n|" + "---|" * len(names)


# ---------------------------------------------------------------------------- tiers
def tier1(dim: int, n: int, out: Path, candidates, seeds=SEEDS) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    mixture = GaussianMixture.random(8, dim, g, separation=0.7, std_range=(0.2, 1.0))
    truth, _ = mixture.sample(n, torch.Generator().manual_seed(7))
    print(f"tier 1: 8-mode Gaussian mixture in {dim} dimensions, {n} samples a set")
    rows = run_tier(
        f"mix{dim}",
        mixture.velocity,
        (dim,),
        n,
        out / "sets",
        mixture,
        truth=truth,
        batch=min(n, 512),
        candidates=candidates,
        seeds=seeds,
    )
    # The truth against itself: what two exact sample sets differ by.
    truth_b, _ = mixture.sample(n, torch.Generator().manual_seed(8))
    print("exact vs exact:", json.dumps({k: round(v, 4) for k, v in distances(truth, truth_b, mixture).items()}))
    return rows


def tier2(n: int, out: Path, candidates, seeds=SEEDS) -> list[dict]:
    from bench.samplers_tier2 import prepare
    from sit.checkpoint import load_sit

    run = prepare(out / "tier2")
    from coordtok.triplane import num_tokens

    model, _, configs = load_sit(run["sit"])
    shape = (num_tokens(tuple(model.grid)), model.in_channels)
    print(f"tier 2: tiny CoordTok-SiT ({run['sit']}, step {configs['step']}), latents {shape}, {n} samples a set")

    def velocity(x, t):
        return model(x, t)

    with torch.no_grad():
        return run_tier(
            f"sit{configs['step']}",
            velocity,
            shape,
            n,
            out / "tier2" / "sets",
            None,
            batch=n,
            candidates=candidates,
            seeds=seeds,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--dim", type=int, default=10240)
    p.add_argument("--n", type=int, default=512, help="samples per set (tier 1)")
    p.add_argument("--n2", type=int, default=512, help="samples per set (tier 2)")
    p.add_argument("--all", action="store_true", help="also " + ", ".join(f"{a} {b}" for a, b in MORE))
    p.add_argument("--out", default="runs/bench-samplers")
    p.add_argument(
        "--seeds",
        type=int,
        nargs=3,
        default=list(SEEDS),
        metavar=("A", "B", "REF"),
        help="the seeds of each sampler's two sets and of the 250-step set they are compared with",
    )
    p.add_argument("--only", nargs="+", default=None, help="only these samplers (names), beside the reference")
    a = p.parse_args()
    from bench.common import machine

    print(f"machine: {machine()}")
    out = Path(a.out)
    results = {}
    for tier in a.tiers:
        candidates = [c for c in CANDIDATES + (MORE if a.all else []) if a.only is None or c[0] in a.only]
        seeds = tuple(a.seeds)
        rows = tier1(a.dim, a.n, out, candidates, seeds) if tier == 1 else tier2(a.n2, out, candidates, seeds)
        print(header(rows))
        for row in rows:
            print(format_row(row))
        results[f"tier{tier}"] = rows
    (out / f"results-{'-'.join(map(str, a.seeds))}.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
