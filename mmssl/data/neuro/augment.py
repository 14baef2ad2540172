"""Batched, device-side augmentation of paired volumes (Fedorov et al., fusion-spec §4.4).

Zero-pad every side by ``pad`` voxels, take a random crop of the original size (offsets
0..2·pad inclusive on each axis — the reference's randint(0, 16) never reached the last one),
and optionally flip each axis with probability ½. :func:`shared_crop_flip` gives both
modalities of a subject the same transform, so their voxels stay aligned (the reference);
:func:`independent_crop_flip`, the default of the data module, draws it anew for each modality.

Why not the reference's way: a shared
translation is a shortcut for the cross-modal terms (XX, CC, RR): the positive pair of a sample
is the only pair in the batch whose two views are shifted alike, so an encoder can solve the
training InfoNCE by reading the brain's position in the field of view, which says nothing about
the subject (measured on the simulator: training loss 5.5 → 2.6 while the loss of the same
training subjects without augmentation rose to 6.8, above chance). None of the taxonomy's
terms needs the views aligned: CC takes every location of the other modality as a positive.

What a crop per modality costs: it misaligns the two volumes by up to ``2 * pad`` voxels, and a
signal shared voxel by voxel does not survive that — on a simulated cohort whose fALFF follows
the subject's anatomy, a model-free matcher pairs 92.5 % of 200 subjects aligned and 2 % after a
one-voxel shift per modality (:func:`mmssl.data.neuro.simulate.pairing_oracle` with
``max_shift``). Neither choice lets RR learn such a pattern from a few hundred subjects (BRAIN.md,
"Why the contrastive objectives learn nothing here").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def shared_crop_flip(
    volumes: Mapping[str, Tensor],
    generator: torch.Generator | None = None,
    *,
    pad: int = 8,
    flip: bool = False,
    flip_axes: Sequence[int] = (0, 1, 2),
) -> dict[str, Tensor]:
    """Apply the same random pad-crop (and flips) per sample to every modality.

    Args:
        volumes: modality → (B, C, D, H, W), all with the same batch size and spatial shape.
        generator: random source (CPU generator: the draws do not depend on the device).
        pad: zero padding per side before the crop; 0 disables the crop.
        flip: flip each of ``flip_axes`` (0 = D, 1 = H, 2 = W) with probability ½.
    """
    names = list(volumes)
    first = volumes[names[0]]
    batch, spatial = first.shape[0], tuple(first.shape[2:])
    for name in names[1:]:
        if volumes[name].shape[0] != batch or tuple(volumes[name].shape[2:]) != spatial:
            raise ValueError(
                f"modalities must share batch and spatial shape; {names[0]} is "
                f"{tuple(first.shape)}, {name} is {tuple(volumes[name].shape)}"
            )
    offsets = torch.randint(0, 2 * pad + 1, (batch, 3), generator=generator) if pad else None
    flips = (torch.rand((batch, 3), generator=generator) < 0.5) if flip else None
    out: dict[str, Tensor] = {}
    for name in names:
        x = volumes[name]
        if offsets is not None:
            padded = F.pad(x, (pad, pad, pad, pad, pad, pad))
            x = torch.stack([
                padded[b, :, o[0]:o[0] + spatial[0], o[1]:o[1] + spatial[1], o[2]:o[2] + spatial[2]]
                for b, o in enumerate(offsets.tolist())
            ])
        if flips is not None:
            samples = []
            for b in range(batch):
                dims = [2 + axis for axis in flip_axes if bool(flips[b, axis])]
                samples.append(x[b:b + 1].flip(dims) if dims else x[b:b + 1])
            x = torch.cat(samples)
        out[name] = x
    return out


def independent_crop_flip(
    volumes: Mapping[str, Tensor],
    generator: torch.Generator | None = None,
    *,
    pad: int = 8,
    flip: bool = False,
    flip_axes: Sequence[int] = (0, 1, 2),
) -> dict[str, Tensor]:
    """Like :func:`shared_crop_flip`, with a separate random crop (and flips) per modality.

    The modalities are drawn in the mapping's order from the one ``generator``, so a seed gives
    the same views on every device and run.
    """
    out: dict[str, Tensor] = {}
    for name, volume in volumes.items():
        out.update(shared_crop_flip({name: volume}, generator, pad=pad, flip=flip,
                                    flip_axes=flip_axes))
    return out
