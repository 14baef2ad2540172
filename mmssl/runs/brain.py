"""Brain-space analyses of a finished run: saliency maps and multimodal links.

``mmssl saliency RUN_DIR`` explains the probe's patients-versus-controls decision (and chosen
latent units) with SmoothGrad in each modality's input space and writes NIfTI maps on the
cohort grid (per group and their difference) with PNG figures. ``mmssl links RUN_DIR`` fits
CCA between two modalities' representations on the training subjects, scores it on the test
subjects against a permutation null, and for a neuroimaging run maps each top canonical
variate back to the brain. On a cohort written by ``mmssl simulate`` the planted ground truth
is used to report how well the maps localise the planted effects.

Every path recorded in ``saliency.json`` and ``links.json`` is relative to the run directory.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmssl import config as cfg
from mmssl import io
from mmssl.data.neuro.simulate import MODALITIES as TRUTH_MODALITIES
from mmssl.data.neuro.simulate import GroundTruth, load_ground_truth
from mmssl.errors import RunDirError
from mmssl.evaluation.links import canonical_variate, reduced_cca_links
from mmssl.evaluation.plots import canonical_scatter, plot_map
from mmssl.evaluation.probe import fit_probe
from mmssl.evaluation.saliency import (
    LatentUnit,
    LinearReadout,
    ProbeLogit,
    group_maps,
    localisation_auc,
    smoothgrad,
)
from mmssl.runs.evaluation import LoadedRun, load_run, read_features
from mmssl.runs.rundir import RunDir

__all__ = ["ground_truth", "run_links", "run_saliency"]

log = logging.getLogger("mmssl")


def _load_brain_run(out: Path, device: str | None) -> tuple[LoadedRun, dict[str, Any],
                                                            dict[str, dict[str, np.ndarray]],
                                                            dict[str, np.ndarray]]:
    run = RunDir(Path(out))
    run.require_evaluated()
    config = cfg.load(run.config)
    if config.data.dataset != "neuro":
        raise RunDirError(
            f"{run.root} was trained on {config.data.dataset}; brain-space maps need volumes "
            "on a brain grid (data.dataset: neuro)"
        )
    loaded = load_run(out, device=device)
    features, labels = read_features(run.features)
    return loaded, run.read_json(run.probe), features, labels


def _truth(loaded: LoadedRun) -> GroundTruth | None:
    manifest = loaded.config.data.settings.manifest
    try:
        return load_ground_truth(Path(manifest))
    except FileNotFoundError:
        return None  # a real cohort


def ground_truth(loaded: LoadedRun, kind: str = "effect") -> dict[str, np.ndarray]:
    """Where ``kind`` (``effect``: diagnosis; ``coupling``) was planted in a simulated cohort,
    per modality, on the run's grid ({} for real cohorts)."""
    import nibabel as nib
    from nilearn.image import resample_img

    truth = _truth(loaded)
    if truth is None:
        return {}
    grid = loaded.datamodule.cohort.grid
    masks: dict[str, np.ndarray] = {}
    for modality in loaded.config.modalities:
        if modality in TRUTH_MODALITIES:
            image = resample_img(nib.load(truth.path(modality, kind)), target_affine=grid.affine,
                                 target_shape=grid.shape, interpolation="nearest",
                                 force_resample=True, copy_header=True)
            masks[modality] = np.asarray(image.dataobj) > 0
    return masks


def latent_values(loaded: LoadedRun, split: str) -> dict[str, np.ndarray]:
    """The planted latent values (severity, coupling) of a split's subjects, when simulated."""
    truth = _truth(loaded)
    if truth is None:
        return {}
    rows = loaded.datamodule.split_rows(split)
    cohort = loaded.datamodule.cohort
    subjects = np.asarray(cohort.subjects)[rows]
    sessions = np.asarray(cohort.sessions)[rows]
    return {name: truth.values(name, subjects, sessions).astype(float)
            for name in ("severity", "coupling") if name in truth.subjects.columns}


def _inputs(loaded: LoadedRun, split: str) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    batches = list(loaded.datamodule.eval_dataloader(split))
    volumes = {m: torch.cat([b[m] for b in batches]) for m in loaded.config.modalities}
    return volumes, torch.cat([b["label"] for b in batches]).numpy()


def _saliency(module: nn.Module, volumes: torch.Tensor, *, samples: int, noise: float,
              batch_size: int, seed: int, device: torch.device) -> np.ndarray:
    maps = []
    for start in range(0, len(volumes), batch_size):
        chunk = volumes[start:start + batch_size].to(device)
        maps.append(smoothgrad(module, chunk, samples=samples, noise=noise,
                               batch_size=batch_size, seed=seed + start).cpu().numpy())
    return np.concatenate(maps)[:, 0]


def _write_map(run: RunDir, volume: np.ndarray, affine: np.ndarray, path: Path, title: str,
               figures: list[str]) -> str:
    io.save_nifti(path, volume.astype(np.float32), affine)
    png = path.with_name(path.name.replace(".nii.gz", ".png"))
    plot_map(path, png, title=title)
    figures.append(run.relative(png))
    return run.relative(path)


def run_saliency(out: Path, *, split: str = "test", samples: int = 16, noise: float = 0.1,
                 latent_dims: Sequence[int] = (), batch_size: int = 4,
                 device: str | None = None) -> dict[str, Any]:
    """SmoothGrad maps of the probe decision (and latent units) per modality; saliency.json."""
    loaded, probe_info, features, labels_by_split = _load_brain_run(out, device)
    run, config, grid = loaded.run, loaded.config, loaded.datamodule.cohort.grid
    latent = loaded.model.encoder(config.modalities[0]).latent_dim
    bad = [d for d in latent_dims if not 0 <= int(d) < latent]
    if bad:
        raise ValueError(f"--latent-dims {bad}: the representation has {latent} units "
                         f"(0..{latent - 1})")
    truth = ground_truth(loaded)
    brain = loaded.datamodule.cohort.mask
    volumes, labels = _inputs(loaded, split)
    encoders = loaded.model.probe_encoders()[""]
    report: dict[str, Any] = {"split": split, "subjects": int(len(labels)), "samples": samples,
                              "noise": noise, "modalities": {}}
    figures: list[str] = []
    for modality in config.modalities:
        chosen_c = probe_info["default"]["chosen_C"][modality]
        probe = fit_probe(
            (features["train"][modality], labels_by_split["train"]),
            (features["val"][modality], labels_by_split["val"]),
            Cs=[chosen_c], max_iter=config.probe.max_iter,
            class_weight=config.probe.class_weight, seed=config.seed,
        )
        maps = _saliency(ProbeLogit(encoders[modality], probe), volumes[modality],
                         samples=samples, noise=noise, batch_size=batch_size, seed=config.seed,
                         device=loaded.device)
        entry: dict[str, Any] = {"maps": {}, "localisation_auc": {}}
        for name, volume in group_maps(maps, labels).items():
            entry["maps"][f"probe_{name}"] = _write_map(
                run, volume, grid.affine, run.saliency / modality / f"probe_{name}.nii.gz",
                f"{modality}: SmoothGrad of the probe decision ({name})", figures)
        if modality in truth:
            entry["localisation_auc"]["probe"] = localisation_auc(
                np.abs(maps).mean(0), truth[modality], brain)
        for dim in latent_dims:
            unit = _saliency(LatentUnit(encoders[modality], int(dim)), volumes[modality],
                             samples=samples, noise=noise, batch_size=batch_size,
                             seed=config.seed, device=loaded.device).mean(0)
            entry["maps"][f"latent_{dim}"] = _write_map(
                run, unit, grid.affine, run.saliency / modality / f"latent_{dim}.nii.gz",
                f"{modality}: SmoothGrad of latent unit {dim}", figures)
            if modality in truth:
                entry["localisation_auc"][f"latent_{dim}"] = localisation_auc(
                    unit, truth[modality], brain)
        report["modalities"][modality] = entry
    report["figures"] = figures
    io.write_json(run.saliency_summary, report)
    return report


def run_links(out: Path, *, components: int = 3, permutations: int = 200,
              modalities: Sequence[str] | None = None, samples: int = 16, noise: float = 0.1,
              batch_size: int = 4, maps: int = 1, pca: int | None = 10,
              device: str | None = None) -> dict[str, Any]:
    """CCA links between two modalities' representations (train → test), mapped to the brain.

    Any evaluated run works: the canonical correlations (with a permutation null) and a
    scatter of the first test variates come from the saved features alone. For a
    neuroimaging run each top canonical variate is also mapped back to the brain by
    SmoothGrad, and on a simulated cohort compared with the planted ground truth.

    With ``pca`` (default 10) each modality's representation is first reduced by a PCA fitted
    on the training subjects (to at most n_train − 2 components): CCA on 64-d features of a
    few dozen subjects otherwise finds perfect, meaningless training correlations.
    """
    run = RunDir(Path(out))
    run.require_evaluated()
    config = cfg.load(run.config)
    features, labels = read_features(run.features)
    pair = list(modalities or config.modalities[:2])
    if len(pair) != 2 or any(m not in config.modalities for m in pair):
        raise ValueError(f"--modalities: links need two of the run's modalities "
                         f"{config.modalities}; got {pair}")
    result, reducers, test = reduced_cca_links(
        {m: features["train"][m] for m in pair}, {m: features["test"][m] for m in pair},
        pca=pca, n_components=components, n_permutations=permutations, seed=config.seed)
    report: dict[str, Any] = {"modalities": pair, "pca_components": {
        m: int(r.n_components_) for m, r in reducers.items()}, **result.to_dict()}
    variates = {m: result.transform(m, test[m]) for m in pair}
    scatter = canonical_scatter(variates, labels["test"], pair,
                                run.links / "component0_scatter.png")
    figures: list[str] = [run.relative(scatter)]
    report["maps"] = {}
    report["figures"] = figures
    if config.data.dataset != "neuro":
        io.write_json(run.links_summary, report)
        return report
    loaded = load_run(out, device=device)
    grid = loaded.datamodule.cohort.grid
    truth = ground_truth(loaded)
    brain = loaded.datamodule.cohort.mask
    volumes, _ = _inputs(loaded, "test")
    encoders = loaded.model.probe_encoders()[""]
    for name, values in latent_values(loaded, "test").items():
        report[f"{name}_correlation"] = {
            m: [float(np.corrcoef(variates[m][:, c], values)[0, 1])
                for c in range(result.n_components)] for m in pair}
    for component in range(min(maps, result.n_components)):
        for modality in pair:
            mean, scale, weights = canonical_variate(result, modality, component)
            if modality in reducers:
                # The variate is linear in z: w·((P(z − μ) − m)/σ) = (Pᵀ(w/σ))·(z − μ) + c.
                pca_model = reducers[modality]
                weights = pca_model.components_.T @ (weights / scale)
                mean, scale = pca_model.mean_, np.ones_like(pca_model.mean_)
            readout = LinearReadout(encoders[modality], mean, scale, weights)
            volume = _saliency(readout, volumes[modality], samples=samples, noise=noise,
                               batch_size=batch_size, seed=config.seed,
                               device=loaded.device).mean(0)
            key = f"component{component}_{modality}"
            report["maps"][key] = _write_map(
                run, volume, grid.affine, run.links / f"{key}.nii.gz",
                f"{modality}: canonical variate {component} (test r = "
                f"{result.test_correlations[component]:.2f})", figures)
            if modality in truth:
                report.setdefault("localisation_auc", {})[key] = localisation_auc(
                    volume, truth[modality], brain)
    io.write_json(run.links_summary, report)
    return report
