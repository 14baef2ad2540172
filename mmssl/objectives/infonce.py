"""The InfoNCE mutual-information estimator used by every taxonomy objective.

Fedorov et al., "Self-Supervised Multimodal Domino" (arXiv 2012.13623), §2, after AMDIM
(Bachman et al., NeurIPS 2019). The estimator is written so that memory grows linearly with the
number of candidate locations: it never builds a batch×batch×locations mask of positives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Critic = Literal["scaled_dot", "dot", "cosine"]
CRITICS: tuple[str, ...] = ("scaled_dot", "dot", "cosine")


@dataclass(frozen=True)
class InfoNCEResult:
    """The two parts of one InfoNCE term: the contrastive loss and the score penalty."""

    loss: Tensor
    penalty: Tensor


def critic_scores(anchors: Tensor, candidates: Tensor, critic: Critic = "scaled_dot",
                  temperature: float = 1.0) -> Tensor:
    r"""Raw critic scores between every anchor and every candidate location.

    With anchors :math:`y \in \mathbb{R}^{B \times C \times L_y}` and candidates
    :math:`x \in \mathbb{R}^{B \times C \times L_x}` it returns
    :math:`s \in \mathbb{R}^{B \times B \times L_x \times L_y}` with
    :math:`s_{ijab} = f(y_{i,:,b}, x_{j,:,a})`, where the critic f is

    * ``scaled_dot``: :math:`u^\top v / \sqrt{C}` (every configuration of the paper),
    * ``dot``: :math:`u^\top v` (the "separable" critic of the reference tests),
    * ``cosine``: :math:`u^\top v / (\lVert u\rVert \lVert v\rVert \tau)`.
    """
    if anchors.dim() != 3 or candidates.dim() != 3:
        raise ValueError(
            f"anchors and candidates must be (batch, channels, locations); got "
            f"{tuple(anchors.shape)} and {tuple(candidates.shape)}"
        )
    if anchors.shape[1] != candidates.shape[1] or anchors.shape[0] > candidates.shape[0]:
        raise ValueError(
            f"anchors {tuple(anchors.shape)} and candidates {tuple(candidates.shape)} must share "
            "batch size and channel count"
        )
    if critic == "cosine":
        anchors = F.normalize(anchors, dim=1, eps=1e-8)
        candidates = F.normalize(candidates, dim=1, eps=1e-8)
        scale = 1.0 / temperature
    elif critic == "scaled_dot":
        scale = 1.0 / math.sqrt(anchors.shape[1])
    elif critic == "dot":
        scale = 1.0
    else:
        raise ValueError(f"unknown critic {critic!r}; valid critics: {', '.join(CRITICS)}")
    return torch.einsum("icb,jca->ijab", anchors, candidates) * scale


def gather_with_grad(tensor: Tensor) -> tuple[Tensor, int]:
    """Concatenate ``tensor`` from every process along dim 0, keeping gradients.

    Returns the global tensor and the offset of this process's rows in it. Without an
    initialised process group (or with one process) it returns ``(tensor, 0)``. The backward
    sums the gradients that every process's loss sends to each process's rows, so with DDP's
    gradient averaging the update equals that of the loss on the global batch.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor, 0
    sizes = [torch.zeros(1, dtype=torch.long, device=tensor.device)
             for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([tensor.shape[0]], device=tensor.device))
    if len({int(size) for size in sizes}) != 1:
        raise ValueError(
            "cross-process negatives need the same batch size on every process; got "
            f"{[int(size) for size in sizes]} (use drop_last=True)"
        )
    return _AllGather.apply(tensor.contiguous()), dist.get_rank() * tensor.shape[0]


class _AllGather(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums every process's gradient of its rows."""

    @staticmethod
    def forward(ctx: object, tensor: Tensor) -> Tensor:  # type: ignore[override]
        import torch.distributed as dist

        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:  # type: ignore[override]
        import torch.distributed as dist

        grad = grad.contiguous()
        dist.all_reduce(grad)
        rows = grad.shape[0] // dist.get_world_size()
        rank = dist.get_rank()
        return grad[rank * rows:(rank + 1) * rows]


def infonce(
    anchors: Tensor,
    candidates: Tensor,
    *,
    critic: Critic = "scaled_dot",
    clip: float | None = 20.0,
    penalty_weight: float = 0.04,
    temperature: float = 1.0,
    gather: bool = False,
) -> InfoNCEResult:
    r"""AMDIM-style InfoNCE between anchors and candidate locations.

    Scores :math:`s_{ijab}` come from :func:`critic_scores` (anchor sample i at anchor location
    b, candidate sample j at candidate location a). The penalty is taken on the raw scores,
    then the scores are soft-clipped:

    .. math::
        \mathrm{pen} = w \cdot \operatorname{mean}_{ijab} s_{ijab}^2, \qquad
        \tilde s = c \tanh(s / c).

    Every location pair of the same sample is a positive with its own softmax term, and every
    location pair of every *other* sample is a negative shared by all positives of that anchor:

    .. math::
        \ell_{iab} = -\tilde s_{iiab}
            + \log\Bigl(e^{\tilde s_{iiab}}
                        + \sum_{j \ne i}\sum_{a', b'} e^{\tilde s_{ija'b'}}\Bigr)
          = \operatorname{softplus}\bigl(N_i - \tilde s_{iiab}\bigr),
        \quad N_i = \log \sum_{j \ne i}\sum_{a',b'} e^{\tilde s_{ija'b'}},

    and the loss is the mean of :math:`\ell_{iab}` over i, a, b. Other locations of the same
    sample are neither positives of each other's softmax nor negatives (as in the reference).

    Memory is :math:`O(B^2 L_x L_y)` for the score tensor itself and nothing more: positives are
    read from the diagonal and the negatives' log-sum-exp masks only a B×B diagonal.

    Args:
        anchors: (B, C, L_y), typically L_y = 1 (a global vector or one sampled location).
        candidates: (B, C, L_x), e.g. all L_x = 64 locations of an 8×8 map.
        critic: ``scaled_dot`` (default), ``dot`` or ``cosine``.
        clip: c of the tanh soft clip (20 in the paper); ``None`` disables it.
        penalty_weight: w of the L2 penalty on raw scores (0.04 in the paper).
        temperature: only for the cosine critic.
        gather: under data-parallel training, take the candidates of every process (with
            gradients, :func:`gather_with_grad`), so each local anchor has the negatives of
            the global batch; the mean over processes then equals the global-batch loss.

    Returns:
        :class:`InfoNCEResult` with the scalar loss and the scalar penalty (0 if w = 0).
    """
    if anchors.dim() == 3 and candidates.dim() == 3 and anchors.shape[0] != candidates.shape[0]:
        raise ValueError(
            f"anchors {tuple(anchors.shape)} and candidates {tuple(candidates.shape)} must share "
            "batch size and channel count"
        )
    offset = 0
    if gather:
        candidates, offset = gather_with_grad(candidates)
    batch = anchors.shape[0]
    if candidates.shape[0] < 2:
        raise ValueError(
            f"InfoNCE needs at least 2 samples per batch for negatives; got {candidates.shape[0]}"
        )
    raw = critic_scores(anchors, candidates, critic, temperature)
    penalty = penalty_weight * raw.pow(2).mean() if penalty_weight else raw.new_zeros(())
    scores = clip * torch.tanh(raw / clip) if clip is not None else raw
    # Positives: s[i, offset + i, a, b] for every location pair of the same sample.
    own = scores[:, offset:offset + batch]
    positives = torch.diagonal(own, dim1=0, dim2=1).permute(2, 0, 1)  # (B, L_x, L_y)
    # Negatives: log-sum-exp over candidate sample j ≠ i and all location pairs.
    per_pair = torch.logsumexp(scores.flatten(2), dim=2)  # (B, B_all): anchor i, candidate j
    same_sample = torch.zeros_like(per_pair, dtype=torch.bool)
    same_sample[:, offset:offset + batch] = torch.eye(batch, dtype=torch.bool,
                                                      device=scores.device)
    negatives = torch.logsumexp(per_pair.masked_fill(same_sample, float("-inf")), dim=1)
    loss = F.softplus(negatives[:, None, None] - positives).mean()
    return InfoNCEResult(loss=loss, penalty=penalty)


def infonce_with_masks(
    anchors: Tensor,
    candidates: Tensor,
    *,
    critic: Critic = "scaled_dot",
    clip: float | None = 20.0,
    penalty_weight: float = 0.04,
    temperature: float = 1.0,
) -> InfoNCEResult:
    """The same loss as :func:`infonce`, computed the straightforward way.

    It materialises a B×B×L_x×L_y positive mask, as the reference implementation does, and is
    kept only as a test oracle and as the baseline of ``benchmarks/throughput.py``.
    """
    batch, _, n_cand = candidates.shape
    n_anchor = anchors.shape[2]
    if anchors.shape[0] != batch:
        raise ValueError("the mask-based oracle needs as many anchors as candidates")
    raw = critic_scores(anchors, candidates, critic, temperature)
    penalty = penalty_weight * raw.pow(2).mean() if penalty_weight else raw.new_zeros(())
    scores = clip * torch.tanh(raw / clip) if clip is not None else raw
    eye = torch.eye(batch, device=scores.device)
    pos_mask = eye[:, :, None, None].expand(batch, batch, n_cand, n_anchor).contiguous()
    neg_mask = 1.0 - pos_mask
    flat = scores.reshape(batch, -1)
    neg_flat = neg_mask.reshape(batch, -1)
    neg_max = (flat - 1e9 * (1.0 - neg_flat)).max(dim=1, keepdim=True).values
    neg_sum = ((flat - neg_max).exp() * neg_flat).sum(dim=1, keepdim=True)
    pos = (scores * pos_mask).sum(dim=1).reshape(batch, -1)  # (B, L_x·L_y)
    log_denominator = torch.log((pos - neg_max).exp() + neg_sum) + neg_max
    loss = (log_denominator - pos).mean()
    return InfoNCEResult(loss=loss, penalty=penalty)
