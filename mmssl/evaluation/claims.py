"""The paper's five claims, checked on a finished sweep (``mmssl claims SWEEP_DIR``).

Fedorov et al., "Self-Supervised Multimodal Domino: in Search of Biomarkers for Alzheimer's
Disease" (arXiv 2012.13623) claim that (1) multimodal contrastive objectives beat the unimodal
one, (2) the composition of objectives matters, (3) maximising the similarity of the global
representations (RR) regularises — sometimes lowering probe scores — while revealing multimodal
relations, (4) decoder-free models beat DCCAE and MMVAE under linear evaluation, and (5) a
jointly learned shared subspace links the modalities.

Every check reads the run directories of a sweep (``<sweep>/<model>/fold<k>-seed<s>``) and
compares models **paired by fold and seed**: for models A and B the difference
:math:`d_r = s_A(r) - s_B(r)` of the test score (ROC AUC for binary labels, accuracy otherwise)
is taken on every run r both have, and reported as mean ± sample standard deviation. Where a
claim needs "the" multimodal or decoder-free model, it is **chosen on the validation split**
(highest mean validation score in that column), never on test.

A difference is called *consistent* when its mean is positive and larger than its standard
deviation over runs (with one run: positive). A claim *holds* when its comparison is consistent
in every representation column, *does not hold* when no column favours it, and is *mixed*
otherwise; it is *not tested* when the sweep lacks the models it needs.

The link strength of a run is the mean of its first three held-out canonical correlations
between the two modalities' representations (:func:`~mmssl.evaluation.links.reduced_cca_links`:
PCA to 10 components and CCA fitted on train, scored on test, with a permutation p-value).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mmssl.objectives.taxonomy import Objective, ObjectiveError

Status = Literal["holds", "mixed", "does not hold", "not tested"]
#: model → (fold, seed) → link statistics of that run.
Links = dict[str, dict[tuple[int, int], dict[str, float]]]

#: Decoder-based baselines of claim 4, as the paper names them.
DECODER_BASELINES: tuple[str, ...] = ("dccae", "mmvae")
_RUN_NAME = re.compile(r"^fold(\d+)-seed(-?\d+)$")


class ClaimsError(ValueError):
    """The directory is not a sweep with finished runs."""


@dataclass(frozen=True)
class RunRecord:
    """One finished run of a sweep."""

    model: str
    fold: int
    seed: int
    run_dir: Path
    metrics: dict[str, Any]

    @property
    def key(self) -> tuple[int, int]:
        return self.fold, self.seed


@dataclass
class Verdict:
    """One claim: its status, a one-line summary and the numbers behind it."""

    claim: str
    status: Status
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Difference:
    """Paired difference of two models' test scores over their common runs."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Difference:
        """Mean, sample std (0 for one value) and count of per-run differences."""
        d = np.asarray(values, dtype=float)
        if not len(d):
            return cls(float("nan"), float("nan"), 0)
        return cls(float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else 0.0, len(d))

    @property
    def consistent(self) -> bool:
        return self.n > 0 and self.mean > 0 and self.mean > self.std

    def __str__(self) -> str:
        return f"{self.mean:+.3f} ± {self.std:.3f} (n={self.n})"


def load_sweep(root: Path) -> list[RunRecord]:
    """Every finished run (``metrics.json`` present) under ``root/<model>/fold<k>-seed<s>``."""
    root = Path(root)
    if not root.is_dir():
        raise ClaimsError(f"{root} is not a directory")
    records = []
    for metrics_path in sorted(root.glob("*/fold*-seed*/metrics.json")):
        match = _RUN_NAME.match(metrics_path.parent.name)
        if not match:
            continue
        records.append(RunRecord(model=metrics_path.parent.parent.name, fold=int(match[1]),
                                 seed=int(match[2]), run_dir=metrics_path.parent,
                                 metrics=json.loads(metrics_path.read_text())))
    if not records:
        raise ClaimsError(f"{root} holds no finished runs (<model>/fold<k>-seed<s>/metrics.json); "
                          "run `mmssl sweep --out` on it first")
    return records


def metric_of(records: list[RunRecord]) -> str:
    """ROC AUC for binary labels, accuracy otherwise (the sweep table's headline metric)."""
    from mmssl.sweep import metric_name

    return metric_name([{"metrics": records[0].metrics}])


def taxonomy_modes(model: str) -> frozenset[str] | None:
    """The modes of a taxonomy model's name, or ``None`` for a baseline."""
    try:
        return frozenset(Objective.parse(model).modes)
    except ObjectiveError:
        return None


class SweepScores:
    """Per-run scores of a sweep, indexed by model, split, column and (fold, seed)."""

    def __init__(self, records: list[RunRecord]) -> None:
        self.records = records
        self.metric = metric_of(records)
        first = records[0].metrics["test"]
        self.columns = [c for c in first if c != "joint"] + (["joint"] if "joint" in first else [])
        self.models = list(dict.fromkeys(r.model for r in records))
        self._scores: dict[tuple[str, str, str], dict[tuple[int, int], float]] = {}
        for record in records:
            for split in ("val", "test"):
                for column, values in record.metrics.get(split, {}).items():
                    if self.metric in values:
                        self._scores.setdefault((record.model, split, column), {})[
                            record.key] = float(values[self.metric])

    def runs(self, model: str, column: str, split: str = "test") -> dict[tuple[int, int], float]:
        return self._scores.get((model, split, column), {})

    def mean(self, model: str, column: str, split: str = "test") -> float:
        values = list(self.runs(model, column, split).values())
        return float(np.mean(values)) if values else float("nan")

    def std(self, model: str, column: str) -> float:
        values = list(self.runs(model, column).values())
        return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")

    def difference(self, a: str, b: str, column: str) -> Difference:
        """Paired test difference a − b over the (fold, seed) runs both have."""
        runs_a, runs_b = self.runs(a, column), self.runs(b, column)
        common = sorted(set(runs_a) & set(runs_b))
        return Difference.of([runs_a[k] - runs_b[k] for k in common])

    def chosen_on_validation(self, models: list[str], column: str) -> str:
        """The model with the highest mean validation score in ``column``."""
        return max(models, key=lambda m: np.nan_to_num(self.mean(m, column, "val"), nan=-1.0))


def _status(per_column: list[bool], any_positive: bool) -> Status:
    if per_column and all(per_column):
        return "holds"
    return "mixed" if any_positive else "does not hold"


def multimodal_beats_unimodal(scores: SweepScores) -> Verdict:
    """Claim 1: the multimodal model chosen on validation beats unimodal CR, per column."""
    claim = "1. multimodal beats unimodal"
    multimodal = [m for m in scores.models
                  if (modes := taxonomy_modes(m)) is not None and modes - {"CR"}]
    if "CR" not in scores.models or not multimodal:
        return Verdict(claim, "not tested", "needs CR and at least one multimodal taxonomy model")
    details: dict[str, Any] = {}
    consistent, positive, parts = [], False, []
    for column in scores.columns:
        chosen = scores.chosen_on_validation(multimodal, column)
        diff = scores.difference(chosen, "CR", column)
        beating = [m for m in multimodal if scores.mean(m, column) > scores.mean("CR", column)]
        details[column] = {"chosen": chosen, "chosen_score": scores.mean(chosen, column),
                           "CR_score": scores.mean("CR", column), "difference": asdict(diff),
                           "multimodal_models_above_CR": f"{len(beating)}/{len(multimodal)}"}
        consistent.append(diff.consistent)
        positive |= diff.mean > 0
        parts.append(f"{column}: {chosen} − CR {diff} ({len(beating)}/{len(multimodal)} above CR)")
    return Verdict(claim, _status(consistent, positive), "; ".join(parts), details)


def composition_matters(scores: SweepScores, effects: dict[str, Any]) -> Verdict:
    """Claim 2: taxonomy models differ by more than twice the run-to-run spread."""
    claim = "2. composition matters"
    taxonomy = [m for m in scores.models if taxonomy_modes(m) is not None]
    if len(taxonomy) < 3:
        return Verdict(claim, "not tested", "needs at least three taxonomy models")
    details: dict[str, Any] = {"mode_effects": effects}
    clear, positive, parts = [], False, []
    for column in scores.columns:
        means = {m: scores.mean(m, column) for m in taxonomy}
        best, worst = max(means, key=means.__getitem__), min(means, key=means.__getitem__)
        spread = means[best] - means[worst]
        stds = [s for m in taxonomy if not np.isnan(s := scores.std(m, column))]
        noise = float(np.mean(stds)) if stds else float("nan")
        details[column] = {"best": best, "worst": worst, "spread": spread, "run_std": noise}
        if not stds:
            return Verdict(claim, "not tested",
                           "needs two or more folds or seeds per model to measure run-to-run "
                           "spread", details)
        clear.append(spread > 2 * noise)
        positive |= spread > noise
        parts.append(f"{column}: {best} {means[best]:.3f} vs {worst} {means[worst]:.3f} "
                     f"(spread {spread:.3f}, run std {noise:.3f})")
    return Verdict(claim, _status(clear, positive), "; ".join(parts), details)


def link_strength(record: RunRecord, *, permutations: int = 100,
                  components: int = 3) -> dict[str, float]:
    """Held-out canonical correlations between the first two modalities of a run."""
    from mmssl.evaluation.links import reduced_cca_links
    from mmssl.pipeline import read_features

    features, _ = read_features(record.run_dir / "features.npz")
    modalities = list(features["train"])[:2]
    result, _, _ = reduced_cca_links(
        {m: features["train"][m] for m in modalities}, {m: features["test"][m] for m in modalities},
        n_components=components, n_permutations=permutations, seed=record.seed)
    return {"strength": float(np.mean(result.test_correlations)),
            "first": float(result.test_correlations[0]), "p_first": float(result.p_values[0])}


def rr_regularises_and_relates(scores: SweepScores, effects: dict[str, Any],
                               links: Links) -> Verdict:
    """Claim 3: adding RR raises the held-out link strength; its probe effect is reported."""
    claim = "3. RR regularises yet reveals relations"
    modes = {m: taxonomy_modes(m) for m in scores.models}
    pairs = [(base, with_rr) for base, b in modes.items() if b is not None and "RR" not in b
             for with_rr, w in modes.items() if w == b | {"RR"}]
    if not pairs:
        return Verdict(claim, "not tested", "needs taxonomy models with and without RR "
                       "(e.g. XX and XX-RR)")
    gains = []
    per_pair = {}
    for base, with_rr in pairs:
        common = sorted(set(links.get(base, {})) & set(links.get(with_rr, {})))
        d = [links[with_rr][k]["strength"] - links[base][k]["strength"] for k in common]
        if d:
            per_pair[f"{base} → {with_rr}"] = float(np.mean(d))
            gains.extend(d)
    probe = {c: v["mean"] for c, v in effects.get("RR", {}).items()}
    lowered = [c for c, v in probe.items() if v < 0]
    details = {"link_gain_per_pair": per_pair, "probe_effect": probe}
    if not gains:
        return Verdict(claim, "not tested", "no features.npz to measure links", details)
    gain = Difference.of(gains)
    details["link_gain"] = asdict(gain)
    summary = (f"+RR changes link strength by {gain} over {len(per_pair)} model pairs; probe "
               "effect " + ", ".join(f"{c} {v:+.3f}" for c, v in probe.items())
               + (f" (lowered: {', '.join(lowered)})" if lowered else " (never lowered)"))
    status: Status = "holds" if gain.consistent else ("mixed" if gain.mean > 0
                                                      else "does not hold")
    return Verdict(claim, status, summary, details)


def decoder_free_beats_decoders(scores: SweepScores) -> Verdict:
    """Claim 4: the taxonomy model chosen on validation beats DCCAE and MMVAE, per column."""
    claim = "4. decoder-free beats DCCAE and MMVAE"
    taxonomy = [m for m in scores.models if taxonomy_modes(m) is not None]
    baselines = [b for b in DECODER_BASELINES if b in scores.models]
    if not taxonomy or not baselines:
        return Verdict(claim, "not tested", "needs taxonomy models and dccae or mmvae")
    details: dict[str, Any] = {}
    consistent, positive, parts = [], False, []
    for column in scores.columns:
        chosen = scores.chosen_on_validation(taxonomy, column)
        for baseline in baselines:
            diff = scores.difference(chosen, baseline, column)
            details[f"{column}/{baseline}"] = {"chosen": chosen, "difference": asdict(diff)}
            consistent.append(diff.consistent)
            positive |= diff.mean > 0
            parts.append(f"{column}: {chosen} − {baseline} {diff}")
    status = _status(consistent, positive)
    if len(baselines) < len(DECODER_BASELINES):
        parts.append("missing: " + ", ".join(set(DECODER_BASELINES) - set(baselines)))
    return Verdict(claim, status, "; ".join(parts), details)


def shared_subspace_links(scores: SweepScores, links: Links) -> Verdict:
    """Claim 5: multimodal runs link the modalities significantly, and more than unimodal CR.

    Per multimodal taxonomy model: its first held-out canonical correlation r₁ is significant
    (permutation p < 0.05) in every run and, when CR was run, its mean r₁ exceeds CR's (two
    views of one object are correlated even when each encoder is trained alone).
    """
    claim = "5. a shared subspace links the modalities"
    multimodal = [m for m in scores.models if (modes := taxonomy_modes(m)) is not None
                  and modes - {"CR"} and m in links]
    if not multimodal:
        return Verdict(claim, "not tested", "needs multimodal taxonomy runs with features.npz")
    details: dict[str, Any] = {}
    for model in multimodal + (["CR"] if "CR" in links else []):
        firsts = [v["first"] for v in links[model].values()]
        ps = [v["p_first"] for v in links[model].values()]
        details[model] = {"first_correlation_mean": float(np.mean(firsts)),
                          "first_correlation_std": float(np.std(firsts, ddof=1))
                          if len(firsts) > 1 else 0.0,
                          "significant": sum(p < 0.05 for p in ps), "runs": len(ps)}
    unimodal = details.get("CR", {}).get("first_correlation_mean", -np.inf)
    passed = [details[m]["significant"] == details[m]["runs"]
              and details[m]["first_correlation_mean"] > unimodal for m in multimodal]
    parts = [f"{m}: r₁ {v['first_correlation_mean']:.3f} ± {v['first_correlation_std']:.3f}, "
             f"p < 0.05 in {v['significant']}/{v['runs']}" for m, v in details.items()]
    return Verdict(claim, _status(passed, any(passed)), "; ".join(parts), details)


def check_claims(records: list[RunRecord], *, permutations: int = 100) -> list[Verdict]:
    """Check the five claims on a sweep's finished runs (:func:`load_sweep`)."""
    from mmssl.sweep import aggregate, mode_effects

    scores = SweepScores(records)
    rows = aggregate([{"model": r.model, "metrics": r.metrics} for r in records])
    effects = mode_effects(rows, scores.columns)
    links: Links = {}
    for record in records:
        if (taxonomy_modes(record.model) is not None and len(scores.columns) > 1
                and (record.run_dir / "features.npz").exists()):
            links.setdefault(record.model, {})[record.key] = link_strength(
                record, permutations=permutations)
    return [
        multimodal_beats_unimodal(scores),
        composition_matters(scores, effects),
        rr_regularises_and_relates(scores, effects, links),
        decoder_free_beats_decoders(scores),
        shared_subspace_links(scores, links),
    ]


def claims_markdown(verdicts: list[Verdict], root: Path, metric: str) -> str:
    """A Markdown table of the verdicts."""
    lines = [f"# The paper's claims on `{root}`", "",
             f"Test {metric}; paired differences are mean ± std over folds × seeds; "
             "models chosen on validation.", "",
             "| claim | verdict | evidence |", "|---|---|---|"]
    lines += [f"| {v.claim} | {v.status} | {v.summary.replace('|', '/')} |" for v in verdicts]
    return "\n".join(lines) + "\n"


def write_claims(root: Path, verdicts: list[Verdict], metric: str) -> tuple[Path, Path]:
    """``claims.json`` and ``claims.md`` in the sweep directory, written atomically."""
    from mmssl.config import write_atomic

    root = Path(root)
    payload = {"metric": metric, "claims": [asdict(v) for v in verdicts]}
    write_atomic(root / "claims.json", json.dumps(payload, indent=2, default=str) + "\n")
    write_atomic(root / "claims.md", claims_markdown(verdicts, root, metric))
    return root / "claims.json", root / "claims.md"
