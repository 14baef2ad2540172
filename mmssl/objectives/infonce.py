r"""The InfoNCE mutual-information estimator used by every taxonomy objective.

Fedorov et al., "Self-Supervised Multimodal Domino" (arXiv 2012.13623), §2, after AMDIM
(Bachman et al., NeurIPS 2019). With anchors :math:`y \in \mathbb{R}^{B \times C \times L_y}`
and candidates :math:`x \in \mathbb{R}^{B' \times C \times L_x}` (B' = B, or the global batch
when negatives are gathered across processes, the local anchors' own samples starting at row
``offset``) the raw scores are :math:`s_{ijab} = \kappa\, y_{i,:,b}^\top x_{j,:,a}` and the
clipped scores :math:`\tilde s = c \tanh(s / c)`. The estimator needs only three things of the
:math:`B \times B' \times L_x \times L_y` score tensor:

.. math::
    \mathrm{pos}_{iab} = \tilde s_{i,\,o+i,\,ab}, \qquad
    P_{ij} = \log \sum_{a,b} e^{\tilde s_{ijab}}, \qquad
    Q = \sum_{ijab} s_{ijab}^2,

then :math:`N_i = \log\sum_{j \ne o+i} e^{P_{ij}}`, the loss
:math:`\operatorname{mean}_{iab} \operatorname{softplus}(N_i - \mathrm{pos}_{iab})` and the
penalty :math:`w\,Q / (B B' L_x L_y)`.

Two estimators compute them:

* ``dense`` (:func:`infonce_dense`) builds the whole score tensor and lets autograd keep the
  raw, squared and clipped copies for backward: several :math:`B B' L_x L_y` buffers alive at
  once (8 MiB each at B = B' = 64, L_x = 512, L_y = 1 in float32).
* ``lean`` (the default of :func:`infonce`) computes all three in **one pass** over the scores,
  chunked over candidate samples: a chunk J of k samples is one batched matrix product giving
  its :math:`k \times B L_y \times L_x` block of s; the block is clipped in place and reduced in
  place to :math:`P_{:,J}`, then freed. (With a clip, the clipped scores lie in [−c, c], so for
  c below ~75 in float32 the log-sum-exp needs no max-shift.) The penalty never touches the
  scores: with :math:`G_x = \sum_{j,a} x_{j,:,a} x_{j,:,a}^\top` (C×C),
  :math:`Q = \kappa^2 \sum_{i,b} y_{i,:,b}^\top G_x\, y_{i,:,b}`, and its gradients are
  :math:`2\kappa^2 G_x y` and :math:`2\kappa^2 (\sum_{i,b} y_{i,:,b} y_{i,:,b}^\top) x`. The
  positives are B products of a :math:`L_y \times C` by a :math:`C \times L_x` matrix. Backward
  **recomputes** each block instead of saving it (activation recomputation, the trade of
  :func:`torch.utils.checkpoint` but inside one :class:`torch.autograd.Function`, so the
  recomputed block is never kept) and applies

  .. math::
      \frac{\partial \mathcal L}{\partial s_{ijab}} = g^P_{ij}\,
          e^{\tilde s_{ijab} - P_{ij}}\,\bigl(1 - (\tilde s_{ijab}/c)^2\bigr)
          + [j = o+i]\, g^{\mathrm{pos}}_{iab} \bigl(1 - (\tilde s_{ijab}/c)^2\bigr)

  (plus the penalty's part above), with :math:`\partial\mathcal L / \partial y_{i,:,b} = \kappa
  \sum_{j,a} \frac{\partial \mathcal L}{\partial s_{ijab}} x_{j,:,a}` and
  :math:`\partial\mathcal L / \partial x_{j,:,a} = \kappa \sum_{i,b}
  \frac{\partial \mathcal L}{\partial s_{ijab}} y_{i,:,b}`, as batched matrix products of the
  block written straight into one gradient buffer per input. Saved for backward: the inputs,
  the :math:`B \times B'` matrix P and the B·L_y·L_x clipped positives; at most about two
  chunk-sized buffers exist at any time. Score tensors of at most :data:`DIRECT_ELEMENTS`
  (RR's B×B, say) are computed directly instead, where the loop's fixed costs would dominate.

Several terms that read the same candidates — in the taxonomy CR, XX and CC all take a
modality's local map — are computed by one call (:func:`infonce_shared`): their anchors become
rows of the same chunk products, and P and Q are reduced per term.

The chunk holds at most :data:`CHUNK_ELEMENTS` scores (:func:`auto_chunk_size`) unless
``chunk_size`` (candidate samples per chunk) is given; a score tensor that small is done in one
chunk. Measured at B = C = 64, L_y = 1 on 2 CPU threads (forward + backward, torch 2.13):
the peak of allocated memory drops from 56 MiB to under 15 MiB at L_x = 512
(``benchmarks/README.md`` has the current figures). Recomputing inside one Function was about
twice as fast as :func:`torch.utils.checkpoint` per chunk, which also keeps the chunk's
intermediates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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


def _critic_inputs(anchors: Tensor, candidates: Tensor, critic: Critic,
                   temperature: float) -> tuple[Tensor, Tensor, float]:
    """Validate shapes and critic; return the (normalised, for cosine) inputs and the scale κ."""
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
    return anchors, candidates, scale


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
    anchors, candidates, scale = _critic_inputs(anchors, candidates, critic, temperature)
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


Estimator = Literal["lean", "dense"]
ESTIMATORS: tuple[str, ...] = ("lean", "dense")

#: Scores per chunk of the lean estimator (2**19 float32 scores = 2 MiB, 4 chunks at B = 64,
#: L_x = 512); a score tensor no larger than this is computed in one chunk. Smaller chunks save
#: little more (the candidates' gradient dominates) and cost a thread synchronisation per pass.
CHUNK_ELEMENTS: int = 2**19


#: At most this many scores in one call (all its terms together; 256 KiB in float32) and no
#: ``chunk_size`` given, the lean estimator computes them directly, as ``dense`` does: the
#: score-sized buffers autograd then keeps are small, and the chunk loop's fixed costs would
#: dominate. Measured on 2 CPU threads (B = 64, C = 64, forward + backward): RR's 64×64 scores
#: 0.42 ms directly against 1.25 ms chunked. Larger calls are chunked: a CR term's 64×64×64
#: scores cost about the same either way inside a training step, and three terms sharing an
#: 8×8 map (786k scores) take 4.9 ms chunked against 6.4 ms directly.
DIRECT_ELEMENTS: int = 2**16


def _common_checks(anchors: Tensor, candidates: Tensor) -> None:
    """The check both estimators make before gathering: anchors and candidates share B."""
    if anchors.dim() == 3 and candidates.dim() == 3 and anchors.shape[0] != candidates.shape[0]:
        raise ValueError(
            f"anchors {tuple(anchors.shape)} and candidates {tuple(candidates.shape)} must share "
            "batch size and channel count"
        )


def _check_negatives(candidates: Tensor) -> None:
    if candidates.shape[0] < 2:
        raise ValueError(
            f"InfoNCE needs at least 2 samples per batch for negatives; got {candidates.shape[0]}"
        )


def _check_settings(clip: float | None, chunk_size: int | None) -> None:
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be positive or None; got {clip}")
    if chunk_size is not None and (
        isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
    ):
        raise ValueError(f"chunk_size must be a positive int or None; got {chunk_size!r}")


def infonce(
    anchors: Tensor,
    candidates: Tensor,
    *,
    critic: Critic = "scaled_dot",
    clip: float | None = 20.0,
    penalty_weight: float = 0.04,
    temperature: float = 1.0,
    gather: bool = False,
    estimator: Estimator = "lean",
    chunk_size: int | None = None,
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

    Both estimators (module docstring) give the same loss, penalty and gradients; ``lean``
    never holds more than a chunk of the score tensor, in forward or backward (a score tensor
    of at most :data:`DIRECT_ELEMENTS` is computed directly, in one piece).

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
        estimator: ``lean`` (default: chunked, recomputing backward) or ``dense``
            (:func:`infonce_dense`, the whole score tensor kept for backward).
        chunk_size: candidate samples per chunk of the lean estimator; by default as many as
            keep a chunk within :data:`CHUNK_ELEMENTS` scores (at least one). Ignored by
            ``dense``.

    Returns:
        :class:`InfoNCEResult` with the scalar loss and the scalar penalty (0 if w = 0).
    """
    return infonce_shared([anchors], candidates, critic=critic, clip=clip,
                          penalty_weight=penalty_weight, temperature=temperature, gather=gather,
                          estimator=estimator, chunk_size=chunk_size)[0]


def infonce_dense(
    anchors: Tensor,
    candidates: Tensor,
    *,
    critic: Critic = "scaled_dot",
    clip: float | None = 20.0,
    penalty_weight: float = 0.04,
    temperature: float = 1.0,
    gather: bool = False,
) -> InfoNCEResult:
    """:func:`infonce` computed on the whole B×B'×L_x×L_y score tensor at once.

    Positives are read from the diagonal and the negatives' log-sum-exp masks only a B×B'
    diagonal, so no positive mask is built; but the raw, squared and clipped score tensors are
    all kept for backward. Kept as the baseline of the lean estimator (same arguments as
    :func:`infonce`, without ``estimator`` and ``chunk_size``).
    """
    _check_settings(clip, None)
    _common_checks(anchors, candidates)
    offset = 0
    if gather:
        candidates, offset = gather_with_grad(candidates)
    return _dense_infonce(anchors, candidates, offset, critic=critic, clip=clip,
                          penalty_weight=penalty_weight, temperature=temperature)


def infonce_shared(
    anchor_sets: Sequence[Tensor],
    candidates: Tensor,
    *,
    critic: Critic = "scaled_dot",
    clip: float | None = 20.0,
    penalty_weight: float = 0.04,
    temperature: float = 1.0,
    gather: bool = False,
    estimator: Estimator = "lean",
    chunk_size: int | None = None,
) -> list[InfoNCEResult]:
    r"""Several InfoNCE terms that share their candidates, computed together.

    Term g has anchors :math:`y^{(g)} \in \mathbb{R}^{B \times C \times L_y}` and the common
    candidates x; its result equals ``infonce(anchor_sets[g], candidates, …)`` (to float
    rounding): loss :math:`\operatorname{mean}_{iab}\operatorname{softplus}(N^{(g)}_i -
    \tilde s^{(g)}_{iiab})` and penalty :math:`w \operatorname{mean} (s^{(g)})^2`. In the
    taxonomy every local map :math:`C_i` is the candidate set of CR (:math:`I(R_i; C_i)`), XX
    (:math:`I(R_j; C_i)`) and CC (:math:`I(C_j[\ell]; C_i)`): with the ``lean`` estimator the
    G terms' anchors become the rows of one chunk product, so the candidates are read (and,
    with ``gather``, gathered across processes) once, and there are G times fewer, larger
    products and passes over the scores. ``dense`` computes the terms one by one.

    Args:
        anchor_sets: G ≥ 1 anchor tensors of one shape (B, C, L_y).
        candidates: (B, C, L_x), shared by all terms.
        critic, clip, penalty_weight, temperature, gather, estimator, chunk_size: as
            :func:`infonce` (``chunk_size`` counts candidate samples, each chunk serving all
            G terms).

    Returns:
        One :class:`InfoNCEResult` per anchor tensor, in order.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(
            f"unknown estimator {estimator!r}; valid estimators: {', '.join(ESTIMATORS)}"
        )
    _check_settings(clip, chunk_size)
    if not anchor_sets:
        raise ValueError("infonce_shared needs at least one anchor tensor")
    shapes = {tuple(a.shape) for a in anchor_sets}
    if len(shapes) != 1:
        raise ValueError(f"anchor tensors of infonce_shared must share one shape; got "
                         f"{[tuple(a.shape) for a in anchor_sets]}")
    if estimator == "dense":
        return [infonce_dense(a, candidates, critic=critic, clip=clip,
                              penalty_weight=penalty_weight, temperature=temperature,
                              gather=gather) for a in anchor_sets]
    _common_checks(anchor_sets[0], candidates)
    if anchor_sets[0].dim() != 3 or candidates.dim() != 3:  # before the gather, a collective
        _critic_inputs(anchor_sets[0], candidates, critic, temperature)
    offset = 0
    if gather:
        candidates, offset = gather_with_grad(candidates)
    return _lean_infonce_shared(anchor_sets, candidates, offset, critic=critic, clip=clip,
                                penalty_weight=penalty_weight, temperature=temperature,
                                chunk_size=chunk_size)


def masked_infonce(
    anchors: Tensor,
    candidates: Tensor,
    valid: Tensor,
    *,
    critic: Critic = "scaled_dot",
    clip: float | None = 20.0,
    penalty_weight: float = 0.04,
    temperature: float = 1.0,
    gather: bool = False,
    estimator: Estimator = "lean",
    chunk_size: int | None = None,
) -> InfoNCEResult | None:
    r""":func:`infonce` restricted to the samples where ``valid`` is true (masking in the batch).

    Samples with ``valid[i]`` false are neither anchors nor candidates (so never negatives):
    the result equals ``infonce(anchors[valid], candidates[valid])``. With fewer than two valid
    samples there are no negatives and the term does not exist: ``None`` is returned.

    With ``gather`` under data-parallel training (an initialised process group of W > 1
    processes) the masks of every process are gathered first (no gradient), then the
    candidates (:func:`gather_with_grad`), and the global candidates are subset by the global
    mask; the local valid anchors find their own samples at the offset given by the valid
    counts of the lower ranks. The term is skipped (``None``, on every process alike) when the
    *global* batch has fewer than two valid samples. Each process's loss and penalty are then
    scaled by :math:`W n_r / n` (:math:`n_r` its valid anchors, :math:`n` the global count),
    so that the process mean that DDP's gradient averaging optimises,
    :math:`\frac1W\sum_r \frac{W n_r}{n}\,\overline{\ell}_r = \frac1n\sum_{\text{valid } i}
    \ell_i`, is exactly the loss of the masked global batch. A process without valid anchors
    contributes zero, still tied to the gathered candidates so that the gather's backward
    (a collective) runs on every process.

    Args:
        anchors: (B, C, L_y) local anchors.
        candidates: (B, C, L_x) local candidates.
        valid: (B,) bool, which samples may take part.
        critic, clip, penalty_weight, temperature, estimator, chunk_size: as :func:`infonce`.
        gather: take the candidates of every process (see above).

    Returns:
        The term's :class:`InfoNCEResult`, or ``None`` when it has fewer than two valid samples.

    Raises:
        ValueError: ``valid`` is not a (B,) bool tensor, or the arguments :func:`infonce`
            refuses.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(
            f"unknown estimator {estimator!r}; valid estimators: {', '.join(ESTIMATORS)}"
        )
    _check_settings(clip, chunk_size)
    _common_checks(anchors, candidates)
    if valid.dtype != torch.bool or tuple(valid.shape) != (anchors.shape[0],):
        raise ValueError(
            f"valid must be a ({anchors.shape[0]},) bool tensor (one flag per sample); got "
            f"{valid.dtype} of shape {tuple(valid.shape)}"
        )
    valid = valid.to(anchors.device)

    def term(mine: Tensor, theirs: Tensor, offset: int) -> InfoNCEResult:
        if estimator == "dense":
            return _dense_infonce(mine, theirs, offset, critic=critic, clip=clip,
                                  penalty_weight=penalty_weight, temperature=temperature)
        return _lean_infonce(mine, theirs, offset, critic=critic, clip=clip,
                             penalty_weight=penalty_weight, temperature=temperature,
                             chunk_size=chunk_size)

    import torch.distributed as dist

    distributed = (gather and dist.is_available() and dist.is_initialized()
                   and dist.get_world_size() > 1)
    if not distributed:
        if int(valid.sum()) < 2:
            return None
        return term(anchors[valid], candidates[valid], 0)

    world, rank = dist.get_world_size(), dist.get_rank()
    flags = valid.to(torch.long)
    every = [torch.empty_like(flags) for _ in range(world)]
    dist.all_gather(every, flags)
    global_valid = torch.cat(every).bool()
    counts = [int(part.sum()) for part in every]
    total = sum(counts)
    if total < 2:
        return None
    gathered, _ = gather_with_grad(candidates)
    kept = gathered[global_valid]
    if counts[rank] == 0:
        tied = gathered.sum() * 0.0
        return InfoNCEResult(loss=tied, penalty=tied)
    result = term(anchors[valid], kept, sum(counts[:rank]))
    scale = world * counts[rank] / total
    return InfoNCEResult(loss=result.loss * scale, penalty=result.penalty * scale)


def _dense_infonce(anchors: Tensor, candidates: Tensor, offset: int, *, critic: Critic,
                   clip: float | None, penalty_weight: float,
                   temperature: float) -> InfoNCEResult:
    """The dense estimator for local anchors whose own samples are ``candidates[offset:]``."""
    _check_negatives(candidates)
    batch = anchors.shape[0]
    raw = critic_scores(anchors, candidates, critic, temperature)
    penalty = penalty_weight * raw.pow(2).mean() if penalty_weight else raw.new_zeros(())
    scores = clip * torch.tanh(raw / clip) if clip is not None else raw
    # Positives: s[i, offset + i, a, b] for every location pair of the same sample.
    own = scores[:, offset:offset + batch]
    positives = torch.diagonal(own, dim1=0, dim2=1).permute(2, 0, 1)  # (B, L_x, L_y)
    # Negatives: log-sum-exp over candidate sample j ≠ i and all location pairs.
    per_pair = torch.logsumexp(scores.flatten(2), dim=2)  # (B, B_all): anchor i, candidate j
    loss = _losses_from_parts(positives.unsqueeze(1), per_pair.unsqueeze(0), offset)[0]
    return InfoNCEResult(loss=loss, penalty=penalty)


def auto_chunk_size(batch: int, anchor_locations: int, candidate_locations: int,
                    n_candidates: int, budget: int = CHUNK_ELEMENTS) -> int:
    """Candidate samples per lean chunk: the most k ≤ B' with B·L_y·k·L_x ≤ budget (k ≥ 1)."""
    per_sample = batch * anchor_locations * candidate_locations
    return max(1, min(n_candidates, budget // max(per_sample, 1)))


def _lean_infonce(anchors: Tensor, candidates: Tensor, offset: int, *, critic: Critic,
                  clip: float | None, penalty_weight: float, temperature: float,
                  chunk_size: int | None = None) -> InfoNCEResult:
    r"""The lean estimator for local anchors whose own samples are ``candidates[offset:]``.

    The positives :math:`\tilde s_{i,o+i,ab}`, the pair log-sum-exps P and the sum of squared
    raw scores Q all come from :class:`_ChunkedScores` (one term: G = 1).
    """
    return _lean_infonce_shared([anchors], candidates, offset, critic=critic, clip=clip,
                                penalty_weight=penalty_weight, temperature=temperature,
                                chunk_size=chunk_size)[0]


def _lean_infonce_shared(anchor_sets: Sequence[Tensor], candidates: Tensor, offset: int, *,
                         critic: Critic, clip: float | None, penalty_weight: float,
                         temperature: float, chunk_size: int | None = None
                         ) -> list[InfoNCEResult]:
    r"""The lean estimator for G terms with the same candidates, in one :class:`_ChunkedScores`.

    The G anchor tensors (each (B, C, L_y)) are laid side by side along the location axis,
    (B, C, G·L_y), so one chunk product serves every term; the scores are then reduced per term
    (P and Q over each term's own L_y·L_x block), which is all that tells the terms apart.
    """
    _check_settings(clip, chunk_size)
    groups = len(anchor_sets)
    stacked = anchor_sets[0] if groups == 1 else torch.cat(list(anchor_sets), dim=2)
    anchors, candidates, scale = _critic_inputs(stacked, candidates, critic, temperature)
    _check_negatives(candidates)
    device_type = candidates.device.type
    if torch.is_autocast_enabled(device_type):
        # Under mixed precision the chunks are computed in float32 (the dense estimator's
        # log-sum-exp runs in float32 under autocast too), always chunked: the Function's
        # backward stays in float32 even when run under autocast, plain autograd ops would not.
        with torch.autocast(device_type, enabled=False):
            scaled_sets = (anchors * scale).float().chunk(groups, dim=2)
            if chunk_size is None:
                chunk_size = auto_chunk_size(anchors.shape[0], anchors.shape[2],
                                             candidates.shape[2], candidates.shape[0])
            return _lean_infonce_shared(scaled_sets, candidates.float(), offset, critic="dot",
                                        clip=clip, penalty_weight=penalty_weight,
                                        temperature=1.0, chunk_size=chunk_size)
    batch, channels, n_rows = anchors.shape  # n_rows = G·L_y per sample
    n_anchor = n_rows // groups
    n_cand_samples, _, n_cand = candidates.shape
    scaled = anchors * scale if scale != 1.0 else anchors
    if chunk_size is None and batch * n_rows * n_cand_samples * n_cand <= DIRECT_ELEMENTS:
        return [_dense_infonce(part, candidates, offset, critic="dot", clip=clip,
                               penalty_weight=penalty_weight, temperature=1.0)
                for part in scaled.chunk(groups, dim=2)]
    rows = scaled.transpose(1, 2).reshape(batch * n_rows, channels).contiguous()  # (B·G·L_y, C)
    candidates = candidates.contiguous()  # chunks are row blocks; their gradients are written so
    if chunk_size is None:
        chunk_size = auto_chunk_size(batch, n_rows, n_cand, n_cand_samples)
    positives, per_pair, squares = _ChunkedScores.apply(
        rows, candidates, batch, groups, offset, clip, chunk_size, bool(penalty_weight))
    losses = _losses_from_parts(positives.view(batch, groups, n_anchor, n_cand), per_pair, offset)
    if penalty_weight:
        penalties = penalty_weight * squares / (batch * n_cand_samples * n_cand * n_anchor)
    else:
        penalties = per_pair.new_zeros(groups)
    return [InfoNCEResult(loss=losses[g], penalty=penalties[g]) for g in range(groups)]


def _losses_from_parts(positives: Tensor, per_pair: Tensor, offset: int) -> Tensor:
    r"""Per term g: mean softplus(N_gi − pos_gi), N_gi the log-sum-exp of P_gij over j ≠ o + i.

    ``positives`` (B, G, L_y, L_x) holds :math:`\tilde s_{i,o+i,ab}` of each term, ``per_pair``
    (G, B, B') each term's P; returns the G losses (the dense estimator's one term: G = 1).
    """
    batch = positives.shape[0]
    same_sample = torch.zeros(per_pair.shape[1:], dtype=torch.bool, device=per_pair.device)
    same_sample[:, offset:offset + batch] = torch.eye(batch, dtype=torch.bool,
                                                      device=per_pair.device)
    negatives = torch.logsumexp(per_pair.masked_fill(same_sample, float("-inf")), dim=2)
    return F.softplus(negatives.T[:, :, None, None] - positives).mean(dim=(0, 2, 3))


def _logsumexp_pairs_(scores: Tensor) -> Tensor:
    """log Σ_{b,a} exp over the last two dims of (…, L_y, L_x) → (…), destroying ``scores``."""
    peak = scores.amax(dim=(-2, -1), keepdim=True)
    total = scores.sub_(peak).exp_().sum(dim=(-2, -1))
    return total.log_().add_(peak[..., 0, 0])


def _chunks(total: int, chunk: int) -> list[tuple[int, int]]:
    """[(start, stop)] of consecutive chunks of ``chunk`` items covering ``total`` items."""
    return [(start, min(start + chunk, total)) for start in range(0, total, chunk)]


class _ChunkedScores(torch.autograd.Function):
    r"""Positives, pair log-sum-exps P and Q = Σ s², chunked, recomputed in backward.

    Inputs: ``rows`` (B·G·L_y, C), the scaled anchors of G terms that share the candidates,
    rows ordered (sample, term, location); ``candidates`` (B', C, L_x); ``batch`` B; ``groups``
    G; ``offset`` o, the row of anchor 0's own sample; ``clip`` c or None; ``chunk`` candidate
    samples per chunk; ``want_squares`` whether Q is needed. Outputs the clipped positives
    :math:`\tilde s_{i,o+i,ab}` as (B, G·L_y, L_x), P per term as (G, B, B') and Q per term
    as (G,). With G = 1 it is one term; with G > 1 every chunk serves all G terms in one
    product (:func:`infonce_shared`).

    A chunk of k candidate samples is the batched product ``rows @ candidates[J]`` of shape
    (k, B·G·L_y, L_x), laid out (j, i, g, b, a): no copy of the candidates is made. With a clip the
    rows are divided by c first, so the product is s/c, ready for the tanh (Q is then
    :math:`c^2 \sum (s/c)^2`). In backward the candidates' gradient, from the chunks and from
    the positives, is written straight into one buffer, so the candidates get a single
    gradient tensor, and every op per chunk works in place where it can: each op is a pass
    over the chunk, and on a busy CPU each pass also costs a thread synchronisation.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, rows: Tensor, candidates: Tensor, batch: int,
        groups: int, offset: int, clip: float | None, chunk: int, want_squares: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        n_cand_samples, channels, n_cand = candidates.shape
        n_anchor = rows.shape[0] // (batch * groups)  # L_y, locations per term's anchor
        lhs = rows if clip is None else rows / clip
        shift = _needs_shift(clip, n_anchor * n_cand, rows.dtype)
        # P transposed: a row per candidate sample j, then anchor sample i, then term g
        pairs_t = rows.new_empty(n_cand_samples, batch, groups)
        for start, stop in _chunks(n_cand_samples, chunk):
            scores = torch.bmm(lhs.expand(stop - start, *lhs.shape), candidates[start:stop])
            grid = scores.view(stop - start, batch, groups, n_anchor, n_cand)  # s, or s/c
            if clip is not None:
                grid.tanh_().mul_(clip)
            if shift:
                pairs_t[start:stop] = _logsumexp_pairs_(grid)
            else:  # |s̃| ≤ c: exp neither overflows nor underflows
                torch.sum(grid.exp_(), dim=(3, 4), out=pairs_t[start:stop])
            del scores, grid
        if not shift:
            pairs_t.log_()
        per_pair = pairs_t.permute(2, 1, 0).contiguous()  # (G, B, B')
        # Q_g = Σ_{r∈g} Σ_{j,a} (y_r·x_ja)² = Σ_{r∈g} y_rᵀ G_x y_r, G_x = Σ_{j,a} x_ja x_jaᵀ:
        # C×C work instead of a pass over the scores.
        if want_squares:
            quadratic = (rows @ _gram(candidates) * rows).sum(dim=1)
            squares = quadratic.view(batch, groups, n_anchor).sum(dim=(0, 2))
        else:
            squares = rows.new_zeros(groups)
        own = candidates[offset:offset + batch]
        positives = torch.bmm(lhs.view(batch, groups * n_anchor, channels), own)  # (B, G·L_y, L_x)
        squashed = None
        if clip is not None:
            squashed = positives.tanh_()
            positives = squashed * clip
        ctx.save_for_backward(rows, candidates, per_pair, squashed)  # type: ignore[arg-type]
        ctx.batch, ctx.offset, ctx.clip = batch, offset, clip  # type: ignore[attr-defined]
        ctx.groups = groups  # type: ignore[attr-defined]
        ctx.chunk, ctx.shift = chunk, shift  # type: ignore[attr-defined]
        ctx.set_materialize_grads(False)
        return positives, per_pair, squares

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(  # type: ignore[override]
        ctx: torch.autograd.function.FunctionCtx, grad_positives: Tensor | None,
        grad_pairs: Tensor | None, grad_squares: Tensor | None,
    ) -> tuple[Tensor | None, Tensor | None, None, None, None, None, None, None]:
        rows = ctx.saved_tensors[0]  # type: ignore[attr-defined]
        # A backward run under autocast (not recommended, but users do it) must not recast the
        # float32 chunks: the forward ran them in float32 (see _lean_infonce).
        with torch.autocast(rows.device.type, enabled=False):
            return _ChunkedScores._backward(ctx, grad_positives, grad_pairs, grad_squares)

    @staticmethod
    def _backward(
        ctx: torch.autograd.function.FunctionCtx, grad_positives: Tensor | None,
        grad_pairs: Tensor | None, grad_squares: Tensor | None,
    ) -> tuple[Tensor | None, Tensor | None, None, None, None, None, None, None]:
        rows, candidates, per_pair, squashed = ctx.saved_tensors  # type: ignore[attr-defined]
        batch, offset, clip = ctx.batch, ctx.offset, ctx.clip  # type: ignore[attr-defined]
        groups = ctx.groups  # type: ignore[attr-defined]
        chunk, shift = ctx.chunk, ctx.shift  # type: ignore[attr-defined]
        need_rows, need_cands = ctx.needs_input_grad[:2]  # type: ignore[attr-defined]
        n_cand_samples, channels, n_cand = candidates.shape
        n_rows = rows.shape[0]
        lhs = rows if clip is None else rows / clip
        # Σ over chunk samples of G_j x_jᵀ is summed once at the end.
        grad_rows = rows.new_zeros(n_rows, channels) if need_rows else None
        grad_cands = torch.zeros_like(candidates) if need_cands else None
        if grad_pairs is not None:  # through P: the only part that needs the scores again
            grad_rows_parts = (rows.new_zeros(min(chunk, n_cand_samples), n_rows, channels)
                               if need_rows else None)
            # g^P exp(s̃ − P): with the shift as written, without it as exp(s̃) · g^P e^{−P}.
            if not shift:
                grad_pairs = grad_pairs * (-per_pair).exp()
            # (G, B, B') → (B', B, G, 1, 1): a candidate sample's chunk rows first
            log_norm = per_pair.permute(2, 1, 0)[..., None, None] if shift else None
            weight = grad_pairs.permute(2, 1, 0)[..., None, None]
            for start, stop in _chunks(n_cand_samples, chunk):
                block = candidates[start:stop]
                scores = torch.bmm(lhs.expand(stop - start, *lhs.shape), block)
                grad = _score_gradient_(
                    scores.view(stop - start, batch, groups, -1, n_cand),
                    None if log_norm is None else log_norm[start:stop],
                    weight[start:stop], clip,
                ).view(stop - start, n_rows, n_cand)
                if grad_rows_parts is not None:
                    grad_rows_parts[:stop - start].baddbmm_(grad, block.transpose(1, 2))
                if grad_cands is not None:
                    torch.bmm(rows.T.expand(stop - start, channels, n_rows), grad,
                              out=grad_cands[start:stop])
                del scores, grad
            if grad_rows is not None and grad_rows_parts is not None:
                grad_rows += grad_rows_parts.sum(dim=0)
        if grad_squares is not None:
            # ∂Q_g/∂y_r = 2 G_x y_r and ∂Q_g/∂x_ja = 2 (Σ_{r∈g} y_r y_rᵀ) x_ja: C×C products
            per_term = n_rows // (batch * groups)
            coef = (2 * grad_squares).view(1, groups, 1).expand(batch, groups, per_term)
            coef = coef.reshape(n_rows, 1)
            if grad_rows is not None:
                grad_rows += coef * (rows @ _gram(candidates))
            if grad_cands is not None:
                outer = (rows * coef).T @ rows  # Σ_g 2 g^Q_g Σ_{r∈g} y_r y_rᵀ
                grad_cands.baddbmm_(outer.expand(n_cand_samples, channels, channels), candidates)
        if grad_positives is not None:  # positives s_{i,o+i,ab}: one L_y×C by C×L_x product each
            grad_raw = grad_positives if squashed is None else \
                grad_positives * (1 - squashed * squashed)  # (B, G·L_y, L_x)
            if grad_rows is not None:
                own = candidates[offset:offset + batch]
                grad_rows += torch.bmm(grad_raw, own.transpose(1, 2)).view(n_rows, channels)
            if grad_cands is not None:
                per_sample = rows.view(batch, -1, channels)
                grad_cands[offset:offset + batch].baddbmm_(per_sample.transpose(1, 2), grad_raw)
        return grad_rows, grad_cands, None, None, None, None, None, None


def _gram(candidates: Tensor) -> Tensor:
    r""":math:`G_x = \sum_{j,a} x_{j,:,a} x_{j,:,a}^\top` (C×C) of candidates (B', C, L_x)."""
    return torch.bmm(candidates, candidates.transpose(1, 2)).sum(dim=0)


def _needs_shift(clip: float | None, terms: int, dtype: torch.dtype) -> bool:
    r"""Whether a log-sum-exp of ``terms`` clipped scores needs its maximum subtracted.

    Clipped scores lie in [−c, c]: when :math:`e^{c} \cdot \mathrm{terms}` cannot overflow and
    :math:`e^{-c}` cannot underflow in ``dtype`` (c ≤ ~75 in float32, any paper setting), the
    plain sum of exponentials is exact to rounding and saves two passes over each chunk.
    """
    if clip is None:
        return True
    info = torch.finfo(dtype)
    return not (clip + math.log(terms) < math.log(info.max) - 4
                and clip < -math.log(info.tiny) - 4)


def _score_gradient_(scores: Tensor, log_norm: Tensor | None, weight: Tensor,
                     clip: float | None) -> Tensor:
    r"""∂L/∂s through P for one recomputed chunk (k, B, G, L_y, L_x); overwrites ``scores``.

    ``scores`` holds :math:`u = s/c` with a clip (u = s without), and

    .. math::
        \frac{\partial L}{\partial s} = \omega\, e^{\tilde s - \lambda}
            \bigl(1 - \tanh^2 u\bigr), \qquad \tilde s = c \tanh u,

    with :math:`\lambda` = ``log_norm`` (P, or 0 when None) and :math:`\omega` = ``weight``
    (:math:`g^P`, or :math:`g^P e^{-P}` when λ = 0), both broadcasting against ``scores``
    (without a clip the last factor is 1). The penalty's part, :math:`2 g^Q s`, never needs
    the scores (:class:`_ChunkedScores` applies it through Gram matrices).
    """
    if clip is None:
        if log_norm is None:
            raise ValueError("unclipped scores need their log-sum-exp shift")
        return scores.sub_(log_norm).exp_().mul_(weight)
    squashed = scores.tanh_()
    grad = torch.mul(squashed, clip)
    if log_norm is not None:
        grad.sub_(log_norm)
    grad.exp_().mul_(weight)
    return grad.addcmul_(grad, squashed.mul_(squashed), value=-1)  # × (1 − tanh²)


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
