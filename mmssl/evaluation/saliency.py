"""Saliency maps of frozen encoders: what in a volume drives a probe or a latent unit.

A saliency map explains a scalar function :math:`f(x)` of the input volume :math:`x` by its
gradient :math:`\\nabla_x f`. Raw gradients of deep networks are noisy, so we use SmoothGrad
(Smilkov et al., 2017, arXiv 1706.03825), the average gradient over Gaussian perturbations,

.. math::

    \\hat M(x) = \\frac{1}{n} \\sum_{i=1}^{n} \\big|\\nabla_x f(x + \\varepsilon_i)\\big|,
    \\qquad \\varepsilon_i \\sim \\mathcal N\\!\\big(0, \\sigma^2 I\\big),
    \\qquad \\sigma = \\text{noise} \\cdot (\\max x - \\min x),

computed with Captum (``NoiseTunnel(Saliency)``, ``nt_type="smoothgrad"``). The absolute value
is taken per sample before averaging (Captum's ``abs=True``); ``absolute=False`` averages the
signed gradients.

The explained function :math:`f` is one of three differentiable heads on top of an encoder:

* :class:`ProbeLogit`: the linear probe's decision function (logit of the positive class),
  :math:`f(x) = w^\\top \\big((z(x) - \\mu) / \\sigma\\big) + b`;
* :class:`LatentUnit`: one (or a few) coordinates :math:`z_d(x)` of the representation;
* :class:`LinearReadout`: standardised linear read-outs :math:`((z(x) - \\mu)/\\sigma)^\\top W`,
  e.g. canonical variates from :mod:`mmssl.evaluation.links`.

Maps are averaged per diagnostic group (:func:`group_maps`) and scored against a known effect
(:func:`localisation_auc`); writing them (:func:`mmssl.io.save_nifti`) and drawing them
(:mod:`mmssl.analysis.brain_figures`) happen elsewhere. Everything here is device-agnostic:
tensors stay on the device they come on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn

from mmssl.evaluation.probe import ProbeResult, embedding

__all__ = [
    "LatentUnit",
    "LinearReadout",
    "ProbeLogit",
    "expected_gradients",
    "group_maps",
    "integrated_gradients",
    "latent_unit_maps",
    "localisation_auc",
    "select_units",
    "smoothgrad",
]


# --------------------------------------------------------------------------------------------
# Differentiable heads
# --------------------------------------------------------------------------------------------


def _latent(out: Any) -> Tensor:
    """The (B, D) representation from an encoder output: the tensor itself or its ``.z``."""
    return embedding(out, "saliency input")


def _vector(name: str, value: ArrayLike, length: int | None = None) -> Tensor:
    """A finite 1-D float tensor (of the given length, if any) built from an array."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if length is not None and array.shape[0] != length:
        raise ValueError(f"{name} has {array.shape[0]} entries; expected {length}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return torch.as_tensor(array, dtype=torch.get_default_dtype())


def _standardiser(
    width: int, mean: ArrayLike | None, scale: ArrayLike | None
) -> tuple[Tensor, Tensor]:
    """Mean and scale tensors of length ``width`` (0 and 1 when absent); scales must be > 0."""
    mu = _vector("mean", np.zeros(width) if mean is None else mean, width)
    sigma = _vector("scale", np.ones(width) if scale is None else scale, width)
    if bool(torch.any(sigma <= 0)):
        raise ValueError("every scale must be positive")
    return mu, sigma


class _Head(nn.Module):
    """An encoder followed by standardisation ``(z − μ)/σ`` of its latent."""

    mean: Tensor
    scale: Tensor

    def __init__(self, encoder: nn.Module, mean: Tensor, scale: Tensor) -> None:
        super().__init__()
        self.encoder = encoder
        self.register_buffer("mean", mean)
        self.register_buffer("scale", scale)

    def standardised(self, x: Tensor) -> Tensor:
        """``(z(x) − μ) / σ`` in the latent's dtype, shape (B, D)."""
        z = _latent(self.encoder(x))
        if z.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"encoder latent has {z.shape[1]} dimensions; the head expects {self.mean.shape[0]}"
            )
        # .to(z): the head's buffers follow the latent's device and dtype (the encoder may have
        # been moved to a GPU after the head was built around it).
        return (z - self.mean.to(z)) / self.scale.to(z)


class ProbeLogit(_Head):
    """The linear probe's decision function as a differentiable function of the input volume.

    .. math::  f(x) = w^\\top \\frac{z(x) - \\mu}{\\sigma} + b

    with the encoder's latent :math:`z(x)`, the probe's standardiser (:math:`\\mu`,
    :math:`\\sigma`) and logistic regression (:math:`w`, :math:`b`). For a binary probe this is
    the logit of ``classes_[1]`` (the positive class, AD), exactly what the pipeline's
    ``decision_function`` returns on the encoder's features; the output has shape (B,). A
    multinomial probe with K > 2 classes gives (B, K) class scores (pick one with ``target``).

    Args:
        encoder: maps (B, C, *spatial) to a (B, D) tensor or an object with such a ``.z``.
        pipeline: a fitted ``Pipeline`` ending in a ``LogisticRegression``, optionally preceded
            by a ``StandardScaler`` (e.g. ``fit_probe(...).model``), or the ``ProbeResult``
            itself; or ``None`` with explicit ``coef`` and ``intercept``.
        coef: (D,) or (K, D) weights :math:`w`, when no pipeline is given.
        intercept: scalar or (K,) bias :math:`b`, when no pipeline is given.
        mean: (D,) :math:`\\mu` (0 if omitted), when no pipeline is given.
        scale: (D,) :math:`\\sigma` (1 if omitted), when no pipeline is given.

    The encoder is not put in eval mode here; :func:`smoothgrad` does that (call ``.eval()``
    yourself for plain forward passes).
    """

    coef: Tensor
    intercept: Tensor

    def __init__(
        self,
        encoder: nn.Module,
        pipeline: Pipeline | ProbeResult | None = None,
        *,
        coef: ArrayLike | None = None,
        intercept: ArrayLike | None = None,
        mean: ArrayLike | None = None,
        scale: ArrayLike | None = None,
    ) -> None:
        if pipeline is not None:
            if any(v is not None for v in (coef, intercept, mean, scale)):
                raise ValueError("pass either a pipeline or explicit coef/intercept/mean/scale")
            if isinstance(pipeline, ProbeResult):
                pipeline = pipeline.model
            coef, intercept, mean, scale = self._from_pipeline(pipeline)
        elif coef is None or intercept is None:
            raise ValueError("without a pipeline, coef and intercept are required")
        w = np.asarray(coef, dtype=np.float64)
        if w.ndim == 1:
            w = w[None, :]
        if w.ndim != 2 or w.shape[1] == 0:
            raise ValueError(f"coef must be (D,) or (K, D), got shape {np.shape(coef)}")
        b = np.atleast_1d(np.asarray(intercept, dtype=np.float64))
        if b.shape != (w.shape[0],):
            raise ValueError(f"intercept has shape {b.shape}; expected ({w.shape[0]},)")
        if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
            raise ValueError("coef and intercept must be finite")
        super().__init__(encoder, *_standardiser(w.shape[1], mean, scale))
        dtype = torch.get_default_dtype()
        self.register_buffer("coef", torch.as_tensor(w, dtype=dtype))
        self.register_buffer("intercept", torch.as_tensor(b, dtype=dtype))

    @staticmethod
    def _from_pipeline(
        pipeline: Pipeline,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(coef, intercept, mean, scale) of a fitted [StandardScaler +] LogisticRegression."""
        steps = [step for _, step in pipeline.steps if step not in (None, "passthrough")]
        if not steps or not isinstance(steps[-1], LogisticRegression):
            raise TypeError("the pipeline must end with a LogisticRegression")
        if len(steps) > 2 or (len(steps) == 2 and not isinstance(steps[0], StandardScaler)):
            raise TypeError(
                "the pipeline may only hold a StandardScaler before the LogisticRegression; got "
                + " → ".join(type(s).__name__ for s in steps)
            )
        logreg = steps[-1]
        if not hasattr(logreg, "coef_"):
            raise ValueError("the pipeline is not fitted")
        mean = scale = None
        if len(steps) == 2:
            scaler = steps[0]
            mean = None if scaler.mean_ is None else np.asarray(scaler.mean_)
            scale = None if scaler.scale_ is None else np.asarray(scaler.scale_)
        return np.asarray(logreg.coef_), np.asarray(logreg.intercept_), mean, scale

    def forward(self, x: Tensor) -> Tensor:
        """Decision function: (B,) for a binary probe, (B, K) for K > 2 classes."""
        u = self.standardised(x)
        logits = u @ self.coef.to(u).T + self.intercept.to(u)
        return logits[:, 0] if logits.shape[1] == 1 else logits


class LatentUnit(nn.Module):
    """Selected coordinates of the encoder's latent: :math:`f(x) = z_d(x)`.

    Args:
        encoder: maps inputs to a (B, D) tensor or an object with such a ``.z``.
        dims: an ``int`` gives (B,) (that unit); a sequence gives (B, len(dims)); ``None``
            gives the whole (B, D) latent. With a multi-column output, :func:`smoothgrad`'s
            ``target`` picks the column.
    """

    def __init__(self, encoder: nn.Module, dims: int | Sequence[int] | None = None) -> None:
        super().__init__()
        self.encoder = encoder
        self.dims: int | tuple[int, ...] | None = (
            dims if dims is None or isinstance(dims, int) else tuple(int(d) for d in dims)
        )
        if isinstance(self.dims, tuple) and not self.dims:
            raise ValueError("dims must not be empty")

    def forward(self, x: Tensor) -> Tensor:
        """z[:, dims]: (B,), (B, k) or (B, D)."""
        z = _latent(self.encoder(x))
        if self.dims is None:
            return z
        wanted = (self.dims,) if isinstance(self.dims, int) else self.dims
        bad = [d for d in wanted if not -z.shape[1] <= d < z.shape[1]]
        if bad:
            raise IndexError(f"latent dimension(s) {bad} out of range for a {z.shape[1]}-d latent")
        return z[:, self.dims] if isinstance(self.dims, int) else z[:, list(self.dims)]


class LinearReadout(_Head):
    """Standardised linear read-outs of the latent: :math:`f(x) = ((z(x) − μ)/σ)^\\top W`.

    Used for the saliency of a canonical variate (:func:`mmssl.evaluation.links.
    canonical_variate` returns ``(mean, scale, weights)``).

    Args:
        encoder: maps inputs to a (B, D) tensor or an object with such a ``.z``.
        mean: (D,) :math:`\\mu`.
        scale: (D,) :math:`\\sigma` (positive).
        weights: (D,) or (D, k) :math:`W`; a vector counts as k = 1.

    The output always has shape (B, k); for k = 1, :func:`smoothgrad` needs no ``target``.
    """

    weights: Tensor

    def __init__(
        self, encoder: nn.Module, mean: ArrayLike, scale: ArrayLike, weights: ArrayLike
    ) -> None:
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim == 1:
            w = w[:, None]
        if w.ndim != 2 or w.shape[1] == 0:
            raise ValueError(f"weights must be (D,) or (D, k), got shape {np.shape(weights)}")
        if not np.all(np.isfinite(w)):
            raise ValueError("weights must be finite")
        super().__init__(encoder, *_standardiser(w.shape[0], mean, scale))
        self.register_buffer("weights", torch.as_tensor(w, dtype=torch.get_default_dtype()))

    def forward(self, x: Tensor) -> Tensor:
        """(B, k) read-outs."""
        u = self.standardised(x)
        return u @ self.weights.to(u)


# --------------------------------------------------------------------------------------------
# SmoothGrad
# --------------------------------------------------------------------------------------------


@contextmanager
def _seeded(device: torch.device, seed: int) -> Iterator[None]:
    """Seed the generator that draws noise on ``device``; restore the RNG state afterwards.

    Only the generator that noise on ``device`` comes from is seeded (CPU, or that one CUDA
    device), and the CPU plus that device's states are restored on exit.
    """
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        with torch.random.fork_rng(devices=[index], device_type="cuda"):
            torch.random.default_generator.manual_seed(seed)
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)
            yield
    elif device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            yield
    else:  # other accelerators: seed everything, restore what fork_rng can
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield


def _require_volumes(inputs: Tensor) -> None:
    """Raise ``ValueError`` unless ``inputs`` is a non-empty floating (B, C, *spatial) batch."""
    if not isinstance(inputs, Tensor) or not inputs.is_floating_point() or inputs.dim() < 2:
        raise ValueError("inputs must be a floating-point tensor of shape (B, C, *spatial)")
    if inputs.shape[0] == 0:
        raise ValueError("inputs hold no volumes")


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's ``training`` flag on exit."""
    flags = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for module, was_training in flags:
            module.training = was_training


def smoothgrad(
    model: nn.Module,
    inputs: Tensor,
    *,
    target: int | None = None,
    samples: int = 16,
    noise: float = 0.1,
    batch_size: int = 8,
    absolute: bool = True,
    seed: int = 0,
    samples_batch_size: int | None = None,
) -> Tensor:
    """SmoothGrad attributions of ``model``'s output with respect to ``inputs``, via Captum.

    For each volume :math:`x` the map is
    :math:`\\frac1n \\sum_i g(\\nabla_x f(x + \\varepsilon_i))` with
    :math:`\\varepsilon_i \\sim \\mathcal N(0, \\sigma_x^2 I)`,
    :math:`\\sigma_x = \\text{noise}\\cdot(\\max x - \\min x)` (per volume), :math:`n` =
    ``samples`` and :math:`g = |\\cdot|` if ``absolute`` else the identity. It is computed with
    ``captum.attr.NoiseTunnel(Saliency(model))`` (``nt_type="smoothgrad"``). ``noise=0,
    samples=1, absolute=False`` gives the plain gradient :math:`\\nabla_x f(x)`.

    The model runs in eval mode (BatchNorm uses running statistics, dropout is off), so each
    volume's map does not depend on the others in its chunk; every submodule's ``training``
    flag is restored afterwards. Noise is drawn from the generator of the inputs' device seeded
    with ``seed``; the global RNG state is restored afterwards, so the call is reproducible and
    leaves no trace. No device is ever named: put ``model`` on the inputs' device beforehand.

    Args:
        model: maps (B, C, *spatial) to (B,) or (B, 1) (then ``target=None``) or (B, K)
            (then ``target`` picks the column), e.g. :class:`ProbeLogit`, :class:`LatentUnit`,
            :class:`LinearReadout`.
        inputs: (B, C, *spatial) floating-point volumes, e.g. (B, 1, D, H, W).
        target: output column to explain, or ``None`` for a one-column output.
        samples: noisy copies per volume, :math:`n \\ge 1`.
        noise: noise level relative to each volume's intensity range (≥ 0; 0.1–0.2 is usual).
        batch_size: volumes per Captum call. Volumes in one call share the noise level, so
            volumes are grouped by :math:`\\sigma_x` first (after min–max normalisation all
            volumes share it); one forward/backward pass holds up to ``batch_size × samples``
            rows unless ``samples_batch_size`` caps the noisy copies per pass.
        absolute: average absolute gradients (the usual SmoothGrad saliency) or signed ones.
        seed: noise seed.
        samples_batch_size: noisy copies per volume in one pass (Captum's
            ``nt_samples_batch_size``); ``None`` means all ``samples`` at once.

    Returns:
        Detached attributions with the shape, dtype and device of ``inputs``.

    Raises:
        ValueError: non-floating or 0/1-D inputs, an empty batch, or invalid ``samples``,
            ``noise``, ``batch_size`` or ``samples_batch_size``.
    """
    from captum.attr import NoiseTunnel, Saliency

    _require_volumes(inputs)
    if samples < 1:
        raise ValueError(f"samples must be ≥ 1, got {samples}")
    if not (np.isfinite(noise) and noise >= 0):
        raise ValueError(f"noise must be finite and ≥ 0, got {noise}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    if samples_batch_size is not None and samples_batch_size < 1:
        raise ValueError(f"samples_batch_size must be ≥ 1, got {samples_batch_size}")

    x = inputs.detach()
    flat = x.reshape(x.shape[0], -1)
    ranges = (flat.amax(dim=1) - flat.amin(dim=1)).double().cpu().numpy()
    stdevs = [float(noise * r) for r in ranges]
    if not all(np.isfinite(stdevs)):
        raise ValueError("inputs contain NaN or infinite values")

    groups: dict[float, list[int]] = {}
    for index, stdev in enumerate(stdevs):
        groups.setdefault(stdev, []).append(index)

    out = torch.empty_like(x)
    tunnel = NoiseTunnel(Saliency(model))
    with _eval_mode(model), _seeded(x.device, seed):
        for stdev, members in groups.items():
            for start in range(0, len(members), batch_size):
                chunk = members[start : start + batch_size]
                idx = torch.as_tensor(chunk, device=x.device)
                attributions = tunnel.attribute(
                    x.index_select(0, idx).clone(),
                    nt_type="smoothgrad",
                    nt_samples=samples,
                    nt_samples_batch_size=samples_batch_size,
                    stdevs=stdev,
                    target=target,
                    abs=absolute,
                )
                out.index_copy_(0, idx, attributions.detach().to(out.dtype))
    return out


# --------------------------------------------------------------------------------------------
# Maps of groups and against a known effect
# --------------------------------------------------------------------------------------------


def group_maps(
    saliency: np.ndarray, labels: np.ndarray, *, positive: int = 1
) -> dict[str, np.ndarray]:
    """Average saliency maps per diagnostic group.

    Args:
        saliency: (N, D, H, W) (or any (N, ...)) per-subject maps.
        labels: (N,) integer labels; ``positive`` marks patients, other labels ≥ 0 controls,
            negative labels (unknown diagnosis) belong to neither group.
        positive: the patients' label.

    Returns:
        float64 maps of shape ``saliency.shape[1:]``: ``patients`` (mean over label ==
        positive), ``controls`` (mean over the other labels ≥ 0), ``difference`` (patients −
        controls) and ``all`` (mean over all N maps, negative labels included).

    Raises:
        ValueError: mismatched shapes, or an empty patient or control group.
    """
    maps = np.asarray(saliency, dtype=np.float64)
    y = np.asarray(labels).reshape(-1)
    if maps.ndim < 2:
        raise ValueError(f"saliency must be (N, ...) maps, got shape {maps.shape}")
    if y.shape[0] != maps.shape[0]:
        raise ValueError(f"{maps.shape[0]} maps but {y.shape[0]} labels")
    patients = y == positive
    controls = (y >= 0) & ~patients
    if not patients.any():
        raise ValueError(f"no patients (label {positive}) among the labels")
    if not controls.any():
        raise ValueError(f"no controls (labels ≥ 0 other than {positive}) among the labels")
    patient_mean = maps[patients].mean(axis=0)
    control_mean = maps[controls].mean(axis=0)
    return {
        "patients": patient_mean,
        "controls": control_mean,
        "difference": patient_mean - control_mean,
        "all": maps.mean(axis=0),
    }


def localisation_auc(
    saliency_map: np.ndarray, truth_mask: np.ndarray, brain_mask: np.ndarray | None = None
) -> float:
    """ROC AUC of voxel saliency as a detector of the ground-truth effect voxels.

    With the voxels :math:`v` inside the brain mask, the score is
    :math:`P(s_v > s_{v'} \\mid v \\in T, v' \\notin T)` (ties count one half), the ROC AUC of
    saliency :math:`s` for membership in the effect mask :math:`T`: 1 is perfect localisation,
    0.5 chance. Masks are boolean (non-zero = inside).

    Raises:
        ValueError: shapes differ, the saliency is not finite in the brain, the brain mask is
            empty, or the effect mask is empty or covers the whole brain.
    """
    s = np.asarray(saliency_map, dtype=np.float64)
    truth = np.asarray(truth_mask) != 0
    brain = np.ones(s.shape, dtype=bool) if brain_mask is None else np.asarray(brain_mask) != 0
    if truth.shape != s.shape or brain.shape != s.shape:
        raise ValueError(
            f"shapes differ: saliency {s.shape}, truth mask {truth.shape}, brain mask {brain.shape}"
        )
    if not brain.any():
        raise ValueError("the brain mask is empty")
    scores, positives = s[brain], truth[brain]
    if not np.all(np.isfinite(scores)):
        raise ValueError("the saliency map has NaN or infinite values inside the brain mask")
    if not positives.any():
        raise ValueError("the effect mask has no voxel inside the brain mask")
    if positives.all():
        raise ValueError("the effect mask covers the whole brain mask; AUC is undefined")
    return float(roc_auc_score(positives, scores))


# --------------------------------------------------------------------------------------------
# Latent-unit gradient maps (the authors' label-free route) and Integrated Gradients
# --------------------------------------------------------------------------------------------


def select_units(latents: np.ndarray, count: int | None) -> list[int]:
    """The ``count`` latent units with the largest variance across subjects (all when None).

    A label-free choice: units that do not vary across subjects carry nothing to map.
    """
    z = np.asarray(latents, dtype=np.float64)
    if z.ndim != 2:
        raise ValueError(f"latents must be (subjects, units), got shape {z.shape}")
    order = np.argsort(-z.var(axis=0), kind="stable")
    return sorted(int(d) for d in (order if count is None else order[:count]))


def latent_unit_maps(
    encoder: nn.Module,
    inputs: Tensor,
    *,
    units: Sequence[int],
    percentile: float = 95.0,
    brain: Tensor | None = None,
) -> Tensor:
    r"""Label-free saliency of a volume: the thresholded gradients of its latent units.

    For every input :math:`x` and unit :math:`d` of ``units`` the map is
    :math:`g_d = \operatorname{ReLU}(\partial z_d / \partial x)`, kept only at or above its own
    ``percentile``-th value inside the brain (Fedorov et al., NeuroImage 285:120485, 2024:
    gradients of each latent unit, ReLU, 95th-percentile threshold) and scaled by its maximum;
    the subject's map is their mean over the units,

    .. math:: M(x) = \frac1{|U|}\sum_{d \in U}
              \frac{g_d \,\mathbb 1[g_d \ge q_{95}(g_d)]}{\max g_d} \in [0, 1].

    The gradients of all units come from one batched backward pass
    (``is_grads_batched``) per input chunk, with the encoder in eval mode.

    Args:
        encoder: maps (B, C, *spatial) to (B, D) or an object with ``.z``.
        inputs: (B, C, *spatial) volumes.
        units: latent units to map (e.g. :func:`select_units`).
        percentile: per-unit threshold, in (0, 100).
        brain: optional (*spatial) bool mask; percentiles are taken inside it and the map is
            0 outside.

    Returns:
        (B, *spatial) maps on the inputs' device, dtype float32.
    """
    if not units:
        raise ValueError("units must name at least one latent unit")
    if not 0 < percentile < 100:
        raise ValueError(f"percentile must be in (0, 100), got {percentile}")
    unit_index = torch.as_tensor(list(units), dtype=torch.long, device=inputs.device)
    maps = []
    with _eval_mode(encoder):
        for x in inputs.split(1):
            x = x.detach().clone().requires_grad_(True)
            z = _latent(encoder(x))
            if int(unit_index.max()) >= z.shape[1]:
                raise IndexError(f"unit {int(unit_index.max())} out of range for a "
                                 f"{z.shape[1]}-d latent")
            picked = z[:, unit_index]  # (1, U)
            eye = torch.eye(len(units), dtype=picked.dtype, device=picked.device)[:, None, :]
            (grads,) = torch.autograd.grad(picked, x, grad_outputs=eye, is_grads_batched=True)
            g = torch.relu(grads[:, 0].sum(dim=1))  # (U, *spatial): channels summed
            flat = g.flatten(1)
            inside = flat[:, brain.flatten().to(flat.device)] if brain is not None else flat
            threshold = torch.quantile(inside.float(), percentile / 100.0, dim=1, keepdim=True)
            peak = flat.amax(dim=1, keepdim=True).clamp_min(torch.finfo(flat.dtype).tiny)
            kept = torch.where(flat >= threshold.to(flat.dtype), flat, torch.zeros_like(flat))
            subject = (kept / peak).mean(dim=0).view(g.shape[1:])
            if brain is not None:
                subject = subject * brain.to(subject.device, subject.dtype)
            maps.append(subject.float())
    return torch.stack(maps)


def integrated_gradients(
    model: nn.Module,
    inputs: Tensor,
    *,
    baseline: Tensor | None = None,
    steps: int = 32,
    batch_size: int = 8,
) -> Tensor:
    r"""Integrated Gradients (Sundararajan et al., ICML 2017) of a scalar ``model`` output.

    .. math:: \mathrm{IG}(x) = (x - \bar x) \odot \int_0^1
              \nabla f\bigl(\bar x + \alpha (x - \bar x)\bigr)\, d\alpha ,

    computed with Captum's ``IntegratedGradients`` (Gauss–Legendre, ``steps`` points); the
    attributions sum to :math:`f(x) - f(\bar x)` (completeness). With the training subjects'
    mean volume as the baseline :math:`\bar x`, a patient's attributions sit where they differ
    from the typical brain in a way the probe uses — the group map of patients then
    concentrates on the disease's regions. Signed, (B, C, *spatial), on the inputs' device.
    """
    from captum.attr import IntegratedGradients  # heavy, loaded with the first attribution

    if steps < 2:
        raise ValueError(f"steps must be ≥ 2, got {steps}")
    base = torch.zeros_like(inputs[:1]) if baseline is None else baseline.to(inputs)
    if base.dim() == inputs.dim() - 1:
        base = base.unsqueeze(0)
    if tuple(base.shape[1:]) != tuple(inputs.shape[1:]):
        raise ValueError(f"baseline shape {tuple(base.shape)} does not fit inputs "
                         f"{tuple(inputs.shape)}")
    method = IntegratedGradients(model)
    out = []
    with _eval_mode(model):
        for x in inputs.split(batch_size):
            out.append(method.attribute(x, baselines=base.expand_as(x), n_steps=steps,
                                        method="gausslegendre",
                                        internal_batch_size=batch_size).detach())
    return torch.cat(out)


@contextmanager
def _numpy_seeded(seed: int) -> Iterator[None]:
    """Seed NumPy's global generator (Captum's GradientShap draws from it); restore it after."""
    state = np.random.get_state()
    try:
        np.random.seed(seed)
        yield
    finally:
        np.random.set_state(state)


def expected_gradients(
    model: nn.Module,
    inputs: Tensor,
    *,
    baselines: Tensor,
    samples: int = 32,
    batch_size: int = 2,
    samples_batch_size: int = 8,
    seed: int = 0,
) -> Tensor:
    r"""Expected gradients (Erion et al., Nature Machine Intelligence 2021) of a scalar output.

    Integrated Gradients with the baseline drawn from the data instead of fixed:

    .. math:: \mathrm{EG}(x) = \mathbb E_{x' \sim D,\ \alpha \sim U(0, 1)}
              \bigl[(x - x') \odot \nabla f\bigl(x' + \alpha (x - x')\bigr)\bigr],

    the gradient-based estimator of SHAP values (Lundberg & Lee, NeurIPS 2017), computed with
    Captum's ``GradientShap`` (no input noise) from ``samples`` Monte-Carlo draws of a
    reference volume :math:`x'` among ``baselines`` and a point :math:`\alpha` per volume.
    In expectation it is complete against the references' mean output,
    :math:`\sum_v \mathrm{EG}_v(x) = f(x) - \mathbb E_{x'} f(x')`; for a linear
    :math:`f = w^\top x` it is exactly :math:`(x - \bar x') \odot w` with the drawn
    references' mean :math:`\bar x'`.

    Why try it for group maps: Integrated Gradients from one baseline multiplies each
    subject's difference from it by the gradient averaged along that subject's own path,
    which for a deep network varies from subject to subject, and a voxel-wise group test of
    such maps tests that variation as much as the volumes. Expected gradients average the
    gradient over paths from the whole reference population instead. Measured on a simulated
    cohort (BRAIN.md, "Two more routes to the fALFF map") this helps little: a constant gradient
    explains about the same share of the attributions' variance across subjects (61 % against
    59 % for IG on fALFF), because the variation lies in the network's gradient near each
    subject rather than in the path from one baseline.

    Draws come from NumPy's global generator (Captum's) seeded with ``seed``, whose state is
    restored afterwards; the model runs in eval mode. The draws are made ``samples_batch_size``
    at a time (the last pass takes what remains), so one pass holds ``batch_size ×
    samples_batch_size`` volumes.

    Args:
        model: maps (B, C, *spatial) to (B,) or (B, 1), e.g. :class:`ProbeLogit`.
        inputs: (B, C, *spatial) floating-point volumes.
        baselines: (R, C, *spatial) reference volumes (e.g. the training subjects').
        samples: Monte-Carlo draws per volume.
        batch_size: volumes per Captum call.
        samples_batch_size: draws per volume in one Captum call.
        seed: seed of the draws.

    Returns:
        Detached signed attributions with the shape and device of ``inputs``.

    Raises:
        ValueError: non-floating or 0/1-D inputs, an empty batch, baselines of another shape,
            or invalid ``samples``, ``batch_size`` or ``samples_batch_size``.
    """
    from captum.attr import GradientShap  # heavy, loaded with the first attribution

    _require_volumes(inputs)
    if baselines.dim() != inputs.dim() or tuple(baselines.shape[1:]) != tuple(inputs.shape[1:]):
        raise ValueError(f"baselines of shape {tuple(baselines.shape)} do not fit inputs "
                         f"{tuple(inputs.shape)}: expected (R, *{tuple(inputs.shape[1:])})")
    if baselines.shape[0] == 0:
        raise ValueError("baselines hold no reference volume")
    if batch_size < 1 or samples_batch_size < 1:
        raise ValueError(f"batch_size and samples_batch_size must be ≥ 1, got {batch_size} "
                         f"and {samples_batch_size}")
    if samples < 1:
        raise ValueError(f"samples must be ≥ 1, got {samples}")
    references = baselines.detach().to(inputs)
    method = GradientShap(model)
    out = []
    with _eval_mode(model), _numpy_seeded(seed), _seeded(inputs.device, seed):
        for x in inputs.detach().split(batch_size):
            total = torch.zeros_like(x)
            for first in range(0, samples, samples_batch_size):
                draws = min(samples_batch_size, samples - first)
                total += draws * method.attribute(x, baselines=references, n_samples=draws,
                                                  stdevs=0.0).detach()
            out.append(total / samples)
    return torch.cat(out)
