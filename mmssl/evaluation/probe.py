"""Frozen-encoder linear evaluation (linear probing) of pretrained modality encoders.

The protocol is deliberately strict about the three leaks of the reference implementation:

* **Frozen really means frozen.** :func:`extract_features` runs every encoder in eval mode under
  :func:`torch.inference_mode`, so BatchNorm uses (and never updates) its running statistics and
  dropout is off. Each module's previous ``training`` flag is restored afterwards.
* **Regularisation is chosen on validation only.** :func:`fit_probe` fits one standardised
  logistic regression per inverse regularisation strength ``C`` on the training split, scores
  it on the validation split, and only then reports the chosen model on validation and test.
  The test split is never consulted for the choice.
* **Deterministic.** A fixed grid replaces the unseeded hyper-parameter search, the solver is
  the deterministic L-BFGS, and ties are broken towards stronger regularisation (smaller ``C``).

Features are extracted once per split and reused by every probe (per modality and ``"joint"``).

**Missing modalities.** A batch may carry ``"present": {modality: (B,) bool}`` (sessions that
lack a modality). :func:`extract_split` then encodes only the present samples of each modality
(the features of absent ones are zeros) and returns the masks; :func:`linear_evaluation` fits
and scores each modality's probe on the rows that have it and the joint probe on the complete
rows only, and reports the number of rows of every probe and split.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypedDict

import numpy as np
import torch
from numpy.typing import ArrayLike, NDArray
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from torch import Tensor, nn

__all__ = [
    "DEFAULT_CS",
    "JOINT",
    "SPLITS",
    "LinearEvaluation",
    "ProbeResult",
    "SplitFeatures",
    "classification_metrics",
    "extract_features",
    "extract_split",
    "fit_probe",
    "linear_evaluation",
]

#: The default grid of inverse L2 regularisation strengths searched on validation.
DEFAULT_CS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)
#: The name under which the probe on all modalities' concatenated features is reported.
JOINT = "joint"
#: The splits :func:`linear_evaluation` requires, in the order they are used.
SPLITS: tuple[str, str, str] = ("train", "val", "test")

_SplitData = tuple[ArrayLike, ArrayLike]
#: One batch of one modality: (embeddings of its present rows or None, presence or None, B).
_Chunk = tuple[np.ndarray | None, np.ndarray | None, int]


# --------------------------------------------------------------------------------------------
# Feature extraction
# --------------------------------------------------------------------------------------------


def embedding(out: Any, modality: str = "?") -> Tensor:
    """The (B, D) embedding from an encoder output: the tensor itself or its ``.z`` attribute."""
    z = out if isinstance(out, Tensor) else getattr(out, "z", None)
    if not isinstance(z, Tensor):
        raise TypeError(
            f"encoder for modality {modality!r} returned {type(out).__name__}; expected a "
            "tensor or an object with a tensor attribute `.z`"
        )
    if z.dim() != 2:
        raise ValueError(
            f"encoder for modality {modality!r} returned an embedding of shape "
            f"{tuple(z.shape)}; expected (batch, features)"
        )
    return z


def _labels_to_numpy(label: Any, batch_index: int) -> NDArray[np.int64]:
    """One batch's labels as a flat int64 array (integral floats and bools are accepted)."""
    t = torch.as_tensor(label).detach().reshape(-1).cpu()
    if t.is_floating_point():
        if not bool(torch.all(t == torch.round(t))):
            raise ValueError(f"batch {batch_index}: labels must be integers, got {t.dtype} values")
    elif t.is_complex():
        raise ValueError(f"batch {batch_index}: labels must be integers, got {t.dtype}")
    return t.to(torch.int64).numpy().copy()


@dataclass(frozen=True)
class SplitFeatures:
    """One split embedded by :func:`extract_split`.

    Attributes:
        features: modality → (N, D) features; rows whose modality is absent are zeros.
        labels: (N,) int64 labels.
        present: modality → (N,) bool, whether each row has that modality (all true when the
            batches carried no presence masks).
    """

    features: dict[str, np.ndarray]
    labels: np.ndarray
    present: dict[str, np.ndarray]


def extract_features(
    encoders: Mapping[str, nn.Module],
    loader: Iterable[Mapping[str, Any]],
    *,
    device: torch.device | str = "cpu",
    label_key: str = "label",
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``(features, labels)`` of :func:`extract_split` (the presence masks dropped)."""
    split = extract_split(encoders, loader, device=device, label_key=label_key)
    return split.features, split.labels


def extract_split(
    encoders: Mapping[str, nn.Module],
    loader: Iterable[Mapping[str, Any]],
    *,
    device: torch.device | str = "cpu",
    label_key: str = "label",
    presence_key: str = "present",
) -> SplitFeatures:
    """Embed a whole split with frozen encoders, in loader order.

    Every encoder is switched to eval mode (BatchNorm uses its running statistics and does not
    update them; dropout is off) and the pass runs under :func:`torch.inference_mode`. Each
    module's previous ``training`` flag is restored afterwards, also when an error is raised.

    A batch with ``presence_key`` (modality → (B,) bool) has each modality encoded on its
    present samples only; the absent rows' features are zeros and :attr:`SplitFeatures.present`
    marks them.

    Args:
        encoders: modality name → encoder. ``encoder(x)`` must return a (B, D) tensor or an
            object whose ``.z`` attribute is one. Encoders are *not* moved: put them on
            ``device`` beforehand.
        loader: batches, each a mapping from modality name to input tensor plus ``label_key``
            (and optionally ``presence_key``).
        device: where each batch's modality tensors are moved before encoding.
        label_key: the key of the labels in each batch.
        presence_key: the key of the presence masks in a batch that has them.

    Returns:
        :class:`SplitFeatures`: modality → (N, D) array (float64 if the encoder computes in
        float64, float32 otherwise), the (N,) int64 labels and the (N,) presence masks, rows in
        loader order.

    Raises:
        ValueError: no encoders, an empty loader, a batch missing a modality or the labels, a
            non-2-D embedding, or an embedding whose batch size differs from the labels'.
        TypeError: an encoder output that is neither a tensor nor has a tensor ``.z``.
    """
    if not encoders:
        raise ValueError("extract_features needs at least one encoder")
    dev = torch.device(device)

    # Record every module's flag before touching any (encoders may share submodules).
    flags: dict[int, tuple[nn.Module, bool]] = {}
    for encoder in encoders.values():
        for module in encoder.modules():
            flags.setdefault(id(module), (module, module.training))

    chunks: dict[str, list[_Chunk]] = {name: [] for name in encoders}
    label_chunks: list[NDArray[np.int64]] = []
    try:
        for encoder in encoders.values():
            encoder.eval()
        with torch.inference_mode():
            for i, batch in enumerate(loader):
                if label_key not in batch:
                    raise ValueError(f"batch {i} has no {label_key!r} entry")
                y = _labels_to_numpy(batch[label_key], i)
                masks = batch.get(presence_key) or {}
                for name, encoder in encoders.items():
                    if name not in batch:
                        raise ValueError(
                            f"batch {i} has no input for modality {name!r} "
                            f"(keys: {sorted(map(str, batch))})"
                        )
                    rows = _presence(masks.get(name), y.shape[0], i, name)
                    x = batch[name]
                    if rows is not None and isinstance(x, Tensor):
                        x = x[torch.from_numpy(np.flatnonzero(rows)).to(x.device)]
                    if isinstance(x, Tensor):
                        x = x.to(dev, non_blocking=True)
                    z = _embed_rows(encoder, x, name) if rows is None or rows.any() else None
                    expected = y.shape[0] if rows is None else int(rows.sum())
                    if z is not None and z.shape[0] != expected:
                        raise ValueError(
                            f"batch {i}: modality {name!r} gave {z.shape[0]} embeddings for "
                            f"{expected} labels"
                        )
                    chunks[name].append((z, rows, y.shape[0]))
                label_chunks.append(y)
    finally:
        for module, was_training in flags.values():
            module.training = was_training

    if not label_chunks:
        raise ValueError("the loader yielded no batches")
    features = {name: _assemble(parts) for name, parts in chunks.items()}
    present = {name: np.concatenate([np.ones(batch, dtype=bool) if rows is None else rows
                                     for _, rows, batch in parts])
               for name, parts in chunks.items()}
    return SplitFeatures(features, np.concatenate(label_chunks, axis=0), present)


def _presence(mask: Any, batch: int, index: int, name: str) -> np.ndarray | None:
    """One batch's presence flags of a modality as a (B,) bool array (``None``: no mask)."""
    if mask is None:
        return None
    flags = torch.as_tensor(mask).detach().reshape(-1).cpu().numpy()
    if flags.dtype != np.bool_ or flags.shape != (batch,):
        raise ValueError(f"batch {index}: presence of modality {name!r} must be {batch} bool "
                         f"flags, got {flags.dtype} of shape {flags.shape}")
    return flags


def _embed_rows(encoder: nn.Module, x: Any, name: str) -> np.ndarray:
    """The (n, D) embedding of ``x`` as a CPU array (float64 kept, float32 otherwise)."""
    z = embedding(encoder(x), name)
    dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    return z.detach().to(device="cpu", dtype=dtype).numpy()


def _assemble(parts: Sequence[_Chunk]) -> np.ndarray:
    """One modality's (N, D) features: each batch's present rows placed among zero rows."""
    shaped = [z for z, _, _ in parts if z is not None]
    width = shaped[0].shape[1] if shaped else 0
    dtype = shaped[0].dtype if shaped else np.dtype(np.float32)
    out: list[np.ndarray] = []
    for z, rows, batch in parts:
        if rows is None and z is not None:
            out.append(z)
            continue
        full = np.zeros((batch, width), dtype=dtype)
        if z is not None:
            full[rows] = z
        out.append(full)
    return np.concatenate(out, axis=0)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def classification_metrics(
    y_true: ArrayLike, proba: ArrayLike, labels: ArrayLike
) -> dict[str, float]:
    """Classification metrics from predicted class probabilities.

    Args:
        y_true: (N,) true labels; every value must occur in ``labels``.
        proba: (N, K) predicted probabilities; column ``k`` belongs to ``labels[k]`` (as with
            scikit-learn's ``predict_proba`` and ``classes_``).
        labels: the K ≥ 2 distinct class labels. With K = 2, ``labels[1]`` is the positive class.

    Returns:
        ``accuracy`` and ``balanced_accuracy`` (mean recall over the classes present in
        ``y_true``) always; for binary problems also ``roc_auc`` and ``brier``, both computed
        from the positive class's probability. All values are plain Python floats.

    Raises:
        ValueError: inconsistent shapes, fewer than two or duplicated labels, labels in
            ``y_true`` that are not in ``labels``, or a binary ``y_true`` with a single class.
    """
    y = np.asarray(y_true).reshape(-1)
    p = np.asarray(proba, dtype=np.float64)
    classes = np.asarray(labels).reshape(-1)
    if classes.size < 2:
        raise ValueError(f"need at least two class labels, got {classes.tolist()}")
    if np.unique(classes).size != classes.size:
        raise ValueError(f"class labels must be distinct, got {classes.tolist()}")
    if y.size == 0:
        raise ValueError("y_true is empty")
    if p.shape != (y.size, classes.size):
        raise ValueError(
            f"proba has shape {p.shape}; expected ({y.size}, {classes.size}) for "
            f"{y.size} samples and {classes.size} classes"
        )
    unknown = np.setdiff1d(y, classes)
    if unknown.size:
        raise ValueError(f"y_true contains labels {unknown.tolist()} not among {classes.tolist()}")

    pred = classes[np.argmax(p, axis=1)]
    correct = pred == y
    recalls = [float(np.mean(correct[y == c])) for c in classes if np.any(y == c)]
    metrics = {
        "accuracy": float(np.mean(correct)),
        "balanced_accuracy": float(np.mean(recalls)),
    }
    if classes.size == 2:
        positive = (y == classes[1]).astype(np.float64)
        p_pos = p[:, 1]
        if positive.min() == positive.max():
            raise ValueError(
                "ROC AUC is undefined: y_true contains a single class "
                f"({classes[int(positive[0])]!r})"
            )
        metrics["roc_auc"] = float(roc_auc_score(positive, p_pos))
        metrics["brier"] = float(np.mean((p_pos - positive) ** 2))
    return metrics


# --------------------------------------------------------------------------------------------
# One probe
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeResult:
    """The outcome of :func:`fit_probe`.

    Attributes:
        chosen_C: the inverse regularisation strength chosen on validation.
        val_curve: every searched ``C`` → its validation score (``val_metric``), ascending ``C``.
        val_metric: the selection metric: ``"roc_auc"`` (binary) or ``"accuracy"`` (multiclass).
        metrics: split (``"val"`` and, when given, ``"test"``) → :func:`classification_metrics`
            of the chosen model.
        classes: the class labels seen in training, in the model's probability-column order.
        model: the chosen scaler + logistic-regression pipeline (fitted on train only).
    """

    chosen_C: float
    val_curve: dict[float, float]
    val_metric: str
    metrics: dict[str, dict[str, float]]
    classes: np.ndarray = field(repr=False, compare=False)
    model: Pipeline = field(repr=False, compare=False)


def _check_split(name: str, data: _SplitData) -> tuple[NDArray[np.float64], np.ndarray]:
    """Validate one (features, labels) pair; return float64 features and flat labels."""
    try:
        raw_x, raw_y = data
    except (TypeError, ValueError):
        raise ValueError(f"split {name!r} must be a (features, labels) pair") from None
    x = np.asarray(raw_x, dtype=np.float64)
    y = np.asarray(raw_y)
    if x.ndim != 2:
        raise ValueError(f"split {name!r}: features must be 2-D (N, D), got shape {x.shape}")
    if y.ndim != 1:
        raise ValueError(f"split {name!r}: labels must be 1-D (N,), got shape {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"split {name!r}: {x.shape[0]} feature rows but {y.shape[0]} labels")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"split {name!r}: empty features of shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"split {name!r}: features contain NaN or infinite values")
    return x, y


def _check_cs(cs: Sequence[float]) -> list[float]:
    """The distinct values of a C grid, ascending; each must be finite and positive."""
    grid = sorted({float(c) for c in cs})
    if not grid:
        raise ValueError("Cs must contain at least one value")
    if any(not np.isfinite(c) or c <= 0 for c in grid):
        raise ValueError(f"every C must be finite and positive, got {list(cs)}")
    return grid


def _make_probe(C: float, *, max_iter: int, class_weight: str | None, seed: int) -> Pipeline:
    """A standardiser followed by an L2 logistic regression (multinomial for K > 2)."""
    return Pipeline(
        [
            ("scale", StandardScaler()),
            (
                "logreg",
                LogisticRegression(
                    C=C,
                    solver="lbfgs",
                    max_iter=max_iter,
                    class_weight=class_weight,
                    random_state=seed,
                ),
            ),
        ]
    )


def fit_probe(
    train: _SplitData,
    val: _SplitData,
    test: _SplitData | None = None,
    *,
    Cs: Sequence[float] = DEFAULT_CS,
    max_iter: int = 1000,
    class_weight: str | None = None,
    seed: int = 0,
) -> ProbeResult:
    """Fit a linear probe, choosing its regularisation on validation only.

    For every ``C`` in ``Cs`` a ``StandardScaler`` + L-BFGS ``LogisticRegression`` pipeline is
    fitted on ``train`` (the scaler sees training rows only) and scored on ``val``: ROC AUC of
    the positive class for binary problems, accuracy otherwise. The best ``C`` wins; ties go to
    the smaller ``C`` (stronger regularisation). The test split plays no part in the choice; the
    chosen model is then evaluated on ``val`` and ``test``.

    Args:
        train: ``(features (N, D), labels (N,))`` used for fitting.
        val: the same for the selection split.
        test: the same for the held-out split, or ``None``.
        Cs: candidate inverse L2 regularisation strengths (positive; duplicates ignored).
        max_iter: L-BFGS iteration limit. Features are standardised, so the default
            converges on typical embeddings; raise it rather than silencing warnings.
        class_weight: ``None`` or ``"balanced"``, passed to ``LogisticRegression``.
        seed: ``random_state`` of the regression (L-BFGS itself is deterministic).

    Returns:
        A :class:`ProbeResult`.

    Raises:
        ValueError: malformed splits, fewer than two training classes, a val/test split with a
            single class or with classes absent from training, or an invalid ``Cs`` grid.
    """
    if class_weight not in (None, "balanced"):
        raise ValueError(f"class_weight must be None or 'balanced', got {class_weight!r}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be positive, got {max_iter}")
    grid = _check_cs(Cs)

    x_train, y_train = _check_split("train", train)
    splits = {"val": _check_split("val", val)}
    if test is not None:
        splits["test"] = _check_split("test", test)

    classes = np.unique(y_train)
    if classes.size < 2:
        raise ValueError(f"split 'train' has a single class ({classes.tolist()}); need two or more")
    for name, (x, y) in splits.items():
        if x.shape[1] != x_train.shape[1]:
            raise ValueError(
                f"split {name!r} has {x.shape[1]} features but 'train' has {x_train.shape[1]}"
            )
        present = np.unique(y)
        if present.size < 2:
            raise ValueError(f"split {name!r} has a single class ({present.tolist()})")
        unseen = np.setdiff1d(present, classes)
        if unseen.size:
            raise ValueError(f"split {name!r} has labels {unseen.tolist()} absent from 'train'")

    val_metric = "roc_auc" if classes.size == 2 else "accuracy"
    x_val, y_val = splits["val"]
    curve: dict[float, float] = {}
    best: tuple[float, Pipeline] | None = None
    best_score = -np.inf
    for C in grid:  # ascending, so a strict improvement is needed to move to a larger C
        model = _make_probe(C, max_iter=max_iter, class_weight=class_weight, seed=seed)
        model.fit(x_train, y_train)
        score = classification_metrics(y_val, model.predict_proba(x_val), model.classes_)[
            val_metric
        ]
        curve[C] = score
        if score > best_score:
            best_score, best = score, (C, model)
    if best is None:  # only if every validation score were NaN
        raise ValueError(f"no C gave a finite validation {val_metric}: {curve}")

    chosen_C, chosen = best
    metrics = {
        name: classification_metrics(y, chosen.predict_proba(x), chosen.classes_)
        for name, (x, y) in splits.items()
    }
    return ProbeResult(
        chosen_C=chosen_C,
        val_curve=curve,
        val_metric=val_metric,
        metrics=metrics,
        classes=np.asarray(chosen.classes_),
        model=chosen,
    )


# --------------------------------------------------------------------------------------------
# All probes of a run
# --------------------------------------------------------------------------------------------


def _presence_masks(split: str, present: Mapping[str, Mapping[str, ArrayLike]] | None,
                    modalities: Sequence[str], n: int) -> dict[str, np.ndarray]:
    """modality → (n,) bool rows of ``split`` that have it (all when not given)."""
    given = {} if present is None else present.get(split, {})
    unknown = [m for m in given if m not in modalities]
    if unknown:
        raise ValueError(f"presence of split {split!r} names unknown modalities {unknown}")
    out: dict[str, np.ndarray] = {}
    for m in modalities:
        if m not in given:
            out[m] = np.ones(n, dtype=bool)
            continue
        mask = np.asarray(given[m])
        if mask.dtype != np.bool_ or mask.shape != (n,):
            raise ValueError(f"presence of split {split!r}, modality {m!r} must be {n} bool "
                             f"flags, got {mask.dtype} of shape {mask.shape}")
        out[m] = mask
    return out


class LinearEvaluation(TypedDict):
    """The result of :func:`linear_evaluation`; ``metrics`` is what goes to ``metrics.json``."""

    #: split ("val", "test") → probe (modality or "joint") → metric name → value.
    metrics: dict[str, dict[str, dict[str, float]]]
    #: probe → the C chosen on validation.
    chosen_C: dict[str, float]
    #: probe → str(C) → validation score (ROC AUC if binary, accuracy otherwise).
    val_curve: dict[str, dict[str, float]]
    #: probe → split → the number of rows it used (those with its modality; joint: complete).
    rows: dict[str, dict[str, int]]


def _check_labels(split: str, raw: ArrayLike) -> np.ndarray:
    """One split's labels, flattened to 1-D, with at least two classes."""
    y = np.asarray(raw)
    if y.ndim != 1:
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        else:
            raise ValueError(f"labels of split {split!r} must be 1-D, got shape {y.shape}")
    classes = np.unique(y)
    if classes.size < 2:
        raise ValueError(
            f"split {split!r} has a single class ({classes.tolist()}); linear evaluation "
            "needs at least two"
        )
    return y


def linear_evaluation(
    features: Mapping[str, Mapping[str, np.ndarray]],
    labels: Mapping[str, np.ndarray],
    *,
    Cs: Sequence[float] = DEFAULT_CS,
    seed: int = 0,
    class_weight: str | None = None,
    max_iter: int = 1000,
    present: Mapping[str, Mapping[str, ArrayLike]] | None = None,
) -> LinearEvaluation:
    """Linear-probe every modality, and all modalities jointly, on pre-extracted features.

    With ``present``, a modality's probe is fitted and scored on the rows of each split that
    have the modality, and the joint probe on the rows that have every modality (complete
    sessions); the features of other rows are never read.

    Args:
        features: split → modality → (N_split, D_modality) features, for the splits
            ``"train"``, ``"val"`` and ``"test"`` (other splits are ignored). The modalities and
            their order are those of ``features["train"]``; every split must have exactly them.
        labels: split → (N_split,) labels.
        Cs: the grid of inverse regularisation strengths, searched on validation.
        seed: ``random_state`` of every probe.
        class_weight: ``None`` or ``"balanced"``.
        max_iter: L-BFGS iteration limit of every probe.
        present: split → modality → (N_split,) bool, whether each row has the modality; a
            split or modality not in it is present in every row (``None``: all rows complete).

    Returns:
        ``{"metrics": {split: {probe: {metric: value}}}, "chosen_C": {probe: C},
        "val_curve": {probe: {str(C): score}}, "rows": {probe: {split: n}}}`` for split in
        ``val``/``test`` (``rows``: also ``train``) and probe in the modalities plus
        ``"joint"`` (the column-wise concatenation of all modalities, in order; only with two
        or more modalities). Every number is a plain Python float (``rows``: int).

    Raises:
        ValueError: a missing split or modality, labels with a single class, feature rows that do
            not match the labels, inconsistent feature widths across splits, a modality named
            ``"joint"`` alongside others, presence masks that are not one bool per row, or a
            probe left with a single class (or no row) in a split once masked.
    """
    for split in SPLITS:
        if split not in features:
            raise ValueError(f"features are missing split {split!r} (have {sorted(features)})")
        if split not in labels:
            raise ValueError(f"labels are missing split {split!r} (have {sorted(labels)})")
    modalities = list(features["train"])
    if not modalities:
        raise ValueError("split 'train' has no modalities")
    if len(modalities) >= 2 and JOINT in modalities:
        raise ValueError(f"modality name {JOINT!r} is reserved for the concatenated probe")

    ys = {split: _check_labels(split, labels[split]) for split in SPLITS}
    xs: dict[str, dict[str, NDArray[np.float64]]] = {}
    for split in SPLITS:
        per_split = features[split]
        missing = [m for m in modalities if m not in per_split]
        if missing:
            raise ValueError(f"split {split!r} is missing modalities {missing}")
        extra = [m for m in per_split if m not in modalities]
        if extra:
            raise ValueError(
                f"split {split!r} has modalities {extra} that split 'train' does not have"
            )
        xs[split] = {}
        for m in modalities:
            x = np.asarray(per_split[m], dtype=np.float64)
            if x.ndim != 2:
                raise ValueError(
                    f"split {split!r}, modality {m!r}: features must be 2-D, got shape {x.shape}"
                )
            if x.shape[0] != ys[split].shape[0]:
                raise ValueError(
                    f"split {split!r}, modality {m!r}: {x.shape[0]} feature rows but "
                    f"{ys[split].shape[0]} labels"
                )
            width = xs["train"][m].shape[1] if split != "train" else x.shape[1]
            if x.shape[1] != width:
                raise ValueError(
                    f"split {split!r}, modality {m!r}: {x.shape[1]} features but 'train' has "
                    f"{width}"
                )
            xs[split][m] = x

    masks = {split: _presence_masks(split, present, modalities, ys[split].shape[0])
             for split in SPLITS}
    probes: dict[str, dict[str, NDArray[np.float64]]] = {
        m: {split: xs[split][m] for split in SPLITS} for m in modalities
    }
    rows: dict[str, dict[str, np.ndarray]] = {
        m: {split: masks[split][m] for split in SPLITS} for m in modalities
    }
    if len(modalities) >= 2:
        probes[JOINT] = {
            split: np.concatenate([xs[split][m] for m in modalities], axis=1) for split in SPLITS
        }
        rows[JOINT] = {split: np.logical_and.reduce([masks[split][m] for m in modalities])
                       for split in SPLITS}

    out: LinearEvaluation = {
        "metrics": {"val": {}, "test": {}},
        "chosen_C": {},
        "val_curve": {},
        "rows": {name: {split: int(kept[split].sum()) for split in SPLITS}
                 for name, kept in rows.items()},
    }
    for name, probe_x in probes.items():
        kept = rows[name]
        try:
            for split in SPLITS:
                if not kept[split].any():
                    raise ValueError(f"split {split!r} has no row with "
                                     f"{'every modality' if name == JOINT else 'this modality'}")
            result = fit_probe(
                (probe_x["train"][kept["train"]], ys["train"][kept["train"]]),
                (probe_x["val"][kept["val"]], ys["val"][kept["val"]]),
                (probe_x["test"][kept["test"]], ys["test"][kept["test"]]),
                Cs=Cs,
                max_iter=max_iter,
                class_weight=class_weight,
                seed=seed,
            )
        except ValueError as err:
            raise ValueError(f"probe {name!r}: {err}") from err
        for split in ("val", "test"):
            out["metrics"][split][name] = result.metrics[split]
        out["chosen_C"][name] = result.chosen_C
        out["val_curve"][name] = {str(c): s for c, s in result.val_curve.items()}
    return out
