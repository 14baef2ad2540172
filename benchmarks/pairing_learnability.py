"""Can InfoNCE learn the cross-modal correspondence a model-free matcher sees, from n subjects?

The brain issue's question, with the encoder taken out. On a simulated cohort whose fALFF follows
the subject's own anatomy (``mmssl simulate --shared-anatomy RHO``), the model-free matcher
(:func:`mmssl.data.neuro.simulate.pairing_oracle`) pairs almost every fALFF map with its own T1:
the two modalities' grey-matter profiles :math:`t_i, f_i \\in \\mathbb{R}^V` share an individual
pattern, voxel by voxel. Here the simplest possible learner gets the same profiles: linear
projections :math:`z^t_i = W_t^\\top t_i`, :math:`z^f_i = W_f^\\top f_i` (:math:`V \\times d`,
Gaussian initialisation of variance :math:`1/V`), trained with the symmetric InfoNCE of RR on
the paper's scaled dot product :math:`s_{ij} = z^t_i \\cdot z^f_j / \\sqrt{d}`,

.. math::
    \\ell = -\\frac{1}{B}\\sum_i \\Big[\\log\\frac{e^{s_{ii}}}{\\sum_j e^{s_{ij}}}
    + \\log\\frac{e^{s_{ii}}}{\\sum_j e^{s_{ji}}}\\Big]

(chance :math:`2 \\ln B`) on batches of ``--batch`` training subjects, with Adam. Two variants:
**separate** projections (one per modality, as mmssl's encoders) and one **shared** projection
:math:`W_t = W_f` (which, at initialisation, is a random projection of two nearly equal
vectors and so already pairs them). Reported at initialisation and after training: the loss on
the training subjects and on held-out subjects (batches of ``--batch``), and the held-out top-1
pairing accuracy among all held-out subjects, beside the matcher's on the same held-out subjects.
Profiles are centred with the training subjects' mean only.

``--max-shift S`` translates every volume by its own integer offset in :math:`[-S, S]^3` first —
what a pad-crop drawn per modality does to the voxel correspondence.

    python -m benchmarks.pairing_learnability COHORT [COHORT …] --train 128 --steps 800 \\
        --json results/cohort200-augment/linear_infonce.json
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from mmssl import io
from mmssl.data.neuro.simulate import grey_matter_profiles
from mmssl.objectives.infonce import critic_scores

__all__ = ["infonce", "learnability", "main", "top1"]


def infonce(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of paired rows on the scaled dot product (chance ``2 ln B``)."""
    # mmssl's critic on one location per sample: s_ij = a_i · b_j / sqrt(d).
    scores = critic_scores(a.unsqueeze(-1), b.unsqueeze(-1), "scaled_dot")[:, :, 0, 0]
    target = torch.arange(len(a))
    return F.cross_entropy(scores, target) + F.cross_entropy(scores.T, target)


def top1(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of rows of ``a`` whose highest dot product is with their own row of ``b``."""
    return float(((a @ b.T).argmax(dim=1) == torch.arange(len(a))).float().mean())


def _batched_loss(a: torch.Tensor, b: torch.Tensor, batch: int) -> float:
    losses = [float(infonce(a[i:i + batch], b[i:i + batch]))
              for i in range(0, len(a) - batch + 1, batch)]
    return float(np.mean(losses)) if losses else math.nan


def learnability(profiles: list[np.ndarray], *, train: int, steps: int, batch: int,
                 latent: int, lr: float, seed: int, checkpoints: list[int],
                 weight_decay: float = 0.0) -> dict[str, Any]:
    """Train separate and shared linear projections; the measurements at ``checkpoints``."""
    if not 2 <= batch <= train < len(profiles[0]):
        raise ValueError(f"need 2 <= --batch ({batch}) <= --train ({train}) < subjects "
                         f"({len(profiles[0])})")
    data = []
    for matrix in profiles:
        centred = matrix - matrix[:train].mean(axis=0)
        data.append(torch.tensor(centred, dtype=torch.float32))
    held = slice(train, None)
    residuals = [d[held] / d[held].norm(dim=1, keepdim=True) for d in data]
    result: dict[str, Any] = {"matcher_top1": top1(residuals[0], residuals[1]),
                              "held_out": len(profiles[0]) - train, "variants": {}}
    voxels = data[0].shape[1]
    for variant in ("separate", "shared"):
        generator = torch.Generator().manual_seed(seed)
        w_t = torch.nn.Parameter(torch.randn(voxels, latent, generator=generator) / voxels**0.5)
        w_f = w_t if variant == "shared" else torch.nn.Parameter(
            torch.randn(voxels, latent, generator=generator) / voxels**0.5)
        parameters = [w_t] if variant == "shared" else [w_t, w_f]
        optimiser = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
        trace = []
        for step in range(steps + 1):
            if step in checkpoints:
                with torch.no_grad():
                    z_t, z_f = data[0] @ w_t, data[1] @ w_f
                    trace.append({
                        "step": step,
                        "train_loss": _batched_loss(z_t[:train], z_f[:train], batch),
                        "held_out_loss": _batched_loss(z_t[held], z_f[held], batch),
                        "held_out_top1": top1(z_t[held], z_f[held])})
            if step == steps:
                break
            index = torch.randperm(train, generator=generator)[:batch]
            loss = infonce(data[0][index] @ w_t, data[1][index] @ w_f)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        result["variants"][variant] = trace
    return result


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cohorts", nargs="+", help="simulated cohort folders")
    parser.add_argument("--train", type=int, default=128, help="training subjects (the first)")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--latent", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.0,
                        help="decoupled weight decay (AdamW); 0: Adam")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-shift", type=int, default=0)
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args(argv)
    checkpoints = sorted({0, args.steps // 8, args.steps // 2, args.steps})
    console = Console()
    results: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k != "json"},
                               "chance_loss": 2 * math.log(args.batch), "cohorts": {}}
    for cohort in args.cohorts:
        started = time.perf_counter()
        _, profiles = grey_matter_profiles(cohort, max_shift=args.max_shift, seed=args.seed)
        found = learnability(profiles, train=args.train, steps=args.steps, batch=args.batch,
                             latent=args.latent, lr=args.lr, seed=args.seed,
                             weight_decay=args.weight_decay,
                             checkpoints=checkpoints)
        found["voxels"] = int(profiles[0].shape[1])
        found["seconds"] = round(time.perf_counter() - started, 1)
        results["cohorts"][Path(cohort).name] = found
        table = Table(title=f"{cohort}: {args.train} training subjects, {found['held_out']} "
                      f"held out, {found['voxels']} voxels; matcher held-out top-1 "
                      f"{found['matcher_top1']:.3f}; loss chance {results['chance_loss']:.2f}")
        for column in ("projection", "step", "training subjects", "held-out", "held-out top-1"):
            table.add_column(column, justify="right")
        for variant, trace in found["variants"].items():
            for point in trace:
                table.add_row(variant, str(point["step"]), f"{point['train_loss']:.2f}",
                              f"{point['held_out_loss']:.2f}", f"{point['held_out_top1']:.3f}")
        console.print(table)
    if args.json:
        io.write_json(Path(args.json), results)
    return results


if __name__ == "__main__":
    main()
