r"""Batched, device-side generation of the two views of Two-View MNIST.

Every digit :math:`x \in [0,1]^{1 \times 32 \times 32}` yields two modalities:

* ``rotated``: :math:`R_\theta x` with :math:`\theta \sim \mathcal{U}[-a, a]` degrees drawn per
  image (``a = max_angle``, 45 by default), nearest-neighbour sampling, zeros outside;
* ``noisy``: :math:`\operatorname{clip}_{[0,1]}(x + \varepsilon)` with
  :math:`\varepsilon_{p} \sim \mathcal{U}[0, 1)` i.i.d. per pixel, on the *unrotated* image.

All random numbers come from an explicit :class:`torch.Generator`, so identical generator states
give identical views; nothing is tied to a particular device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "IMAGE_SIZE",
    "TWO_VIEW_MODALITIES",
    "derive_seed",
    "make_views",
    "prepare_images",
    "rotate",
    "sample_angles",
]

#: The modalities of Two-View MNIST, in canonical order.
TWO_VIEW_MODALITIES: tuple[str, ...] = ("rotated", "noisy")

#: Side length of the prepared images.
IMAGE_SIZE = 32

_CHUNK = 8192


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that depends deterministically on ``parts`` and on nothing else.

    The parts (integers, possibly negative, or strings) are tagged by type, turned into
    non-negative integers and hashed by :class:`numpy.random.SeedSequence`, so the result is the
    same in every process and on every platform (unlike Python's salted ``hash`` of a string), and
    distinct part tuples give unrelated seeds.

    Args:
        *parts: the values to mix, e.g. ``(seed, "train", epoch, first_index)``.

    Returns:
        An integer in ``[0, 2**63)``, suitable for :meth:`torch.Generator.manual_seed`.
    """
    entropy: list[int] = []
    for part in parts:
        if isinstance(part, str):
            raw = part.encode("utf-8")
            entropy += [2, len(raw), int.from_bytes(raw, "big")]
        else:
            value = int(part)
            entropy += [0, value] if value >= 0 else [1, -value]
    state = np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0]
    return int(state) & (2**63 - 1)


def prepare_images(images: np.ndarray | Tensor, *, size: int = IMAGE_SIZE) -> Tensor:
    r"""Scale digits to :math:`[0,1]` per image and resize them to ``size`` × ``size``.

    Each image is min–max scaled, :math:`x \mapsto (x - \min x) / (\max x - \min x)` (a constant
    image maps to zeros), then resized bilinearly
    (``F.interpolate(mode="bilinear", align_corners=False)``) and clamped to :math:`[0,1]`.

    Args:
        images: ``(N, H, W)`` or ``(N, 1, H, W)``, any real dtype (typically ``uint8`` 28×28).
        size: output side length.

    Returns:
        ``float32`` tensor ``(N, 1, size, size)`` on the input's device (CPU for numpy input).
    """
    x = torch.as_tensor(np.asarray(images)) if isinstance(images, np.ndarray) else images
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(
            f"expected images of shape (N, H, W) or (N, 1, H, W), got {tuple(x.shape)}"
        )
    x = x.to(torch.float32)
    out = torch.empty((x.shape[0], 1, size, size), dtype=torch.float32, device=x.device)
    for start in range(0, x.shape[0], _CHUNK):
        chunk = x[start:start + _CHUNK]
        low = chunk.amin(dim=(-2, -1), keepdim=True)
        span = chunk.amax(dim=(-2, -1), keepdim=True) - low
        scaled = (chunk - low) / torch.where(span > 0, span, torch.ones_like(span))
        if scaled.shape[-2:] != (size, size):
            scaled = F.interpolate(scaled, size=(size, size), mode="bilinear",
                                   align_corners=False)
        out[start:start + _CHUNK] = scaled.clamp_(0.0, 1.0)
    return out


def rotate(images: Tensor, angles_deg: Tensor) -> Tensor:
    r"""Rotate each image of a batch by its own angle about the image centre.

    A positive angle rotates **counter-clockwise as displayed** with row 0 at the top (the
    convention of PIL and torchvision): for square images ``rotate(x, 90)`` equals
    ``torch.rot90(x, k=1, dims=(-2, -1))``. Output pixel :math:`p` (centred coordinates, x to the
    right, y downwards) takes the nearest input pixel to :math:`R^{-1} p` with

    .. math::
        R^{-1} = \begin{pmatrix} \cos\theta & -\sin\theta \\ \sin\theta & \cos\theta \end{pmatrix},

    and zero where that falls outside the image (``F.affine_grid`` + ``F.grid_sample`` with
    ``mode="nearest"``, ``padding_mode="zeros"``, ``align_corners=False``; the aspect ratio of
    non-square images is accounted for).

    Args:
        images: floating tensor ``(B, C, H, W)``.
        angles_deg: ``(B,)`` angles in degrees (any device; moved to the images').

    Returns:
        The rotated batch, same shape, dtype and device as ``images``.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
    b, _, h, w = images.shape
    angles = torch.as_tensor(angles_deg).to(device=images.device, dtype=images.dtype).reshape(-1)
    if angles.numel() != b:
        raise ValueError(f"expected {b} angles, got {angles.numel()}")
    rad = angles * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(cos)
    # Normalised coordinates scale x by 2/W and y by 2/H; the ratios keep the rotation rigid.
    theta = torch.stack(
        [torch.stack([cos, -sin * (h / w), zero], dim=-1),
         torch.stack([sin * (w / h), cos, zero], dim=-1)],
        dim=-2,
    )
    grid = F.affine_grid(theta, [b, images.shape[1], h, w], align_corners=False)
    return F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)


def sample_angles(n: int, generator: torch.Generator | None = None, *, max_angle: float = 45.0,
                  device: torch.device | str | None = None) -> Tensor:
    r"""Draw ``n`` angles :math:`\theta_i = a (2u_i - 1)`, :math:`u_i \sim \mathcal{U}[0,1)`.

    Args:
        n: how many angles.
        generator: the random source; drawn on its device (the default generator if ``None``).
        max_angle: :math:`a`, in degrees; the angles lie in :math:`[-a, a)`.
        device: where the result goes (defaults to the drawing device).

    Returns:
        ``float32`` tensor ``(n,)`` of degrees.
    """
    draw_device = generator.device if generator is not None else device
    u = torch.rand(n, generator=generator, device=draw_device, dtype=torch.float32)
    angles = (2.0 * u - 1.0) * float(max_angle)
    return angles if device is None else angles.to(device)


def make_views(images: Tensor, generator: torch.Generator | None = None, *,
               max_angle: float = 45.0,
               modalities: Sequence[str] = TWO_VIEW_MODALITIES) -> dict[str, Tensor]:
    r"""Generate the ``rotated`` and ``noisy`` views of a batch of prepared digits.

    With :math:`u_i \sim \mathcal{U}[0,1)` per image and :math:`\varepsilon \sim \mathcal{U}[0,1)`
    per pixel (drawn in that order from ``generator``):

    .. math::
        \text{rotated}_i = R_{a(2u_i - 1)}\, x_i, \qquad
        \text{noisy}_i = \operatorname{clip}_{[0,1]}(x_i + \varepsilon_i).

    Random numbers are drawn on the generator's device (the images' device when ``generator`` is
    ``None``) and moved to the images' device, so the same generator state always gives the same
    views. Both draws happen whatever ``modalities`` asks for, so the random stream (and hence
    each view) does not depend on which views are requested.

    Args:
        images: ``(B, 1, H, W)`` floating tensor in :math:`[0,1]`.
        generator: the random source.
        max_angle: :math:`a`, the largest absolute rotation in degrees.
        modalities: which views to compute, a subset of :data:`TWO_VIEW_MODALITIES`.

    Returns:
        ``{"rotated": ..., "noisy": ...}`` (only the requested keys), each shaped like ``images``.
    """
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (B, C, H, W), got {tuple(images.shape)}")
    unknown = [m for m in modalities if m not in TWO_VIEW_MODALITIES]
    if unknown:
        raise ValueError(f"unknown modalities {unknown}; valid ones are {TWO_VIEW_MODALITIES}")
    draw_device = generator.device if generator is not None else images.device
    angles = sample_angles(images.shape[0], generator, max_angle=max_angle, device=draw_device)
    noise = torch.rand(images.shape, generator=generator, device=draw_device, dtype=torch.float32)
    views: dict[str, Tensor] = {}
    if "rotated" in modalities:
        views["rotated"] = rotate(images, angles.to(images.device))
    if "noisy" in modalities:
        noise = noise.to(device=images.device, dtype=images.dtype)
        views["noisy"] = (images + noise).clamp_(0.0, 1.0)
    return {m: views[m] for m in TWO_VIEW_MODALITIES if m in views}
