"""Brain-space analyses of a finished neuroimaging run: saliency maps and multimodal links.

``mmssl saliency RUN_DIR`` explains the probe's AD-versus-control decision (and chosen latent
dimensions) with SmoothGrad in each modality's input space, writes NIfTI maps with the
cohort grid's affine (per subject group and their difference) and PNG figures. ``mmssl links
RUN_DIR`` fits CCA between the two modalities' representations on the training subjects,
scores it on the test subjects against a permutation baseline, and maps each top canonical
variate back to the brain, so one sees which T1 regions go with which fALFF regions.

On a cohort written by ``mmssl simulate`` the planted ground truth (``ground_truth/`` beside
the manifest; ``severity`` in the manifest) is used to report how well the maps localise the
planted effects (ROC AUC of voxel saliency against the effect masks) and whether the link
found is the planted one (correlation of the canonical variates with severity).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmssl import config as cfg
from mmssl.pipeline import (
    RunDir,
    RunDirError,
    _chosen_checkpoint,
    _device,
    make_datamodule,
    read_features,
    write_json,
)

log = logging.getLogger("mmssl")


@dataclass
class LoadedRun:
    """What the analyses need from a run directory."""

    run: RunDir
    config: cfg.RunConfig
    model: Any
    datamodule: Any
    features: dict[str, dict[str, np.ndarray]]
    labels: dict[str, np.ndarray]
    probe_info: dict[str, Any]
    device: torch.device


def load_run(out: Path, *, device: str | None = None) -> LoadedRun:
    """Load a neuroimaging run that has been pretrained and evaluated."""
    from mmssl.methods import method_class

    run = RunDir(Path(out))
    if not run.config.exists():
        raise RunDirError(f"{run.root} is not a run directory (no config.yaml)")
    config = cfg.load(run.config)
    if config.data.dataset != "neuro":
        raise RunDirError(
            f"{run.root} was trained on {config.data.dataset}; brain-space maps need volumes "
            "on a brain grid (data.dataset: neuro)"
        )
    if not run.metrics.exists() or not run.features.exists():
        raise RunDirError(f"{run.root} has not been evaluated; run `mmssl evaluate {run.root}`")
    torch_device = torch.device(device) if device else _device(config.trainer.accelerator)
    model = method_class(config.method).load_from_checkpoint(
        _chosen_checkpoint(config, run), map_location="cpu").to(torch_device).eval()
    datamodule = make_datamodule(config)
    datamodule.setup("fit")
    features, labels = read_features(run.features)
    return LoadedRun(run, config, model, datamodule, features, labels,
                     json.loads(run.probe.read_text()), torch_device)


def ground_truth(loaded: LoadedRun) -> dict[str, np.ndarray]:
    """Planted effect masks of a simulated cohort on the run's grid ({} for real cohorts)."""
    import nibabel as nib
    from nilearn.image import resample_img

    folder = Path(loaded.config.data.manifest or ".").parent / "ground_truth"
    grid = loaded.datamodule.cohort.grid
    masks: dict[str, np.ndarray] = {}
    for modality in loaded.config.modalities:
        path = folder / f"{modality}_effect.nii.gz"
        if path.exists():
            image = resample_img(nib.load(path), target_affine=grid.affine,
                                 target_shape=grid.shape, interpolation="nearest",
                                 force_resample=True, copy_header=True)
            masks[modality] = np.asarray(image.dataobj) > 0
    return masks


def _inputs(loaded: LoadedRun, split: str) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    batches = list(loaded.datamodule.eval_dataloader(split))
    volumes = {m: torch.cat([b[m] for b in batches]) for m in loaded.config.modalities}
    return volumes, torch.cat([b["label"] for b in batches]).numpy()


def _saliency(module: nn.Module, volumes: torch.Tensor, *, samples: int, noise: float,
              batch_size: int, seed: int, device: torch.device) -> np.ndarray:
    from mmssl.evaluation.saliency import smoothgrad

    maps = []
    for start in range(0, len(volumes), batch_size):
        chunk = volumes[start:start + batch_size].to(device)
        maps.append(smoothgrad(module, chunk, samples=samples, noise=noise,
                               batch_size=batch_size, seed=seed + start).cpu().numpy())
    return np.concatenate(maps)[:, 0]


def _write_map(volume: np.ndarray, affine: np.ndarray, path: Path, title: str,
               figures: list[str]) -> str:
    from mmssl.evaluation.saliency import plot_map, save_nifti

    save_nifti(volume.astype(np.float32), affine, path)
    png = path.with_name(path.name.replace(".nii.gz", ".png"))
    plot_map(path, png, title=title)
    figures.append(str(png))
    return str(path)


def run_saliency(out: Path, *, split: str = "test", samples: int = 16, noise: float = 0.1,
                 latent_dims: Sequence[int] = (), batch_size: int = 4,
                 device: str | None = None) -> dict[str, Any]:
    """SmoothGrad maps of the probe decision (and latent units) per modality; saliency.json."""
    from mmssl.evaluation.probe import fit_probe
    from mmssl.evaluation.saliency import (
        LatentUnit,
        ProbeLogit,
        group_maps,
        localisation_auc,
    )

    loaded = load_run(out, device=device)
    config, grid = loaded.config, loaded.datamodule.cohort.grid
    folder = loaded.run.root / "saliency"
    truth = ground_truth(loaded)
    brain = loaded.datamodule.cohort.mask
    volumes, labels = _inputs(loaded, split)
    encoders = loaded.model.probe_encoders()[""]
    report: dict[str, Any] = {"split": split, "subjects": int(len(labels)), "samples": samples,
                              "noise": noise, "modalities": {}}
    figures: list[str] = []
    for modality in config.modalities:
        chosen_c = loaded.probe_info["default"]["chosen_C"][modality]
        probe = fit_probe(
            (loaded.features["train"][modality], loaded.labels["train"]),
            (loaded.features["val"][modality], loaded.labels["val"]),
            Cs=[chosen_c], max_iter=config.probe.max_iter,
            class_weight=config.probe.class_weight, seed=config.seed,
        )
        maps = _saliency(ProbeLogit(encoders[modality], probe), volumes[modality],
                         samples=samples, noise=noise, batch_size=batch_size, seed=config.seed,
                         device=loaded.device)
        entry: dict[str, Any] = {"maps": {}, "localisation_auc": {}}
        for name, volume in group_maps(maps, labels).items():
            entry["maps"][f"probe_{name}"] = _write_map(
                volume, grid.affine, folder / modality / f"probe_{name}.nii.gz",
                f"{modality}: SmoothGrad of the probe decision ({name})", figures)
        if modality in truth:
            entry["localisation_auc"]["probe"] = localisation_auc(
                np.abs(maps).mean(0), truth[modality], brain)
        for dim in latent_dims:
            unit = _saliency(LatentUnit(encoders[modality], int(dim)), volumes[modality],
                             samples=samples, noise=noise, batch_size=batch_size,
                             seed=config.seed, device=loaded.device).mean(0)
            entry["maps"][f"latent_{dim}"] = _write_map(
                unit, grid.affine, folder / modality / f"latent_{dim}.nii.gz",
                f"{modality}: SmoothGrad of latent unit {dim}", figures)
            if modality in truth:
                entry["localisation_auc"][f"latent_{dim}"] = localisation_auc(
                    unit, truth[modality], brain)
        report["modalities"][modality] = entry
    report["figures"] = figures
    write_json(loaded.run.root / "saliency.json", report)
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
    from mmssl.evaluation.links import canonical_variate, reduced_cca_links
    from mmssl.evaluation.saliency import LinearReadout, localisation_auc

    run = RunDir(Path(out))
    if not run.config.exists():
        raise RunDirError(f"{run.root} is not a run directory (no config.yaml)")
    config = cfg.load(run.config)
    features, labels = read_features(run.features)
    pair = list(modalities or config.modalities[:2])
    if len(pair) != 2 or any(m not in config.modalities for m in pair):
        raise ValueError(f"links need two of the run's modalities {config.modalities}; got {pair}")
    result, reducers, test = reduced_cca_links(
        {m: features["train"][m] for m in pair}, {m: features["test"][m] for m in pair},
        pca=pca, n_components=components, n_permutations=permutations, seed=config.seed)
    report: dict[str, Any] = {"modalities": pair, "pca_components": {
        m: int(r.n_components_) for m, r in reducers.items()}, **result.to_dict()}
    folder = run.root / "links"
    variates = {m: result.transform(m, test[m]) for m in pair}
    figures: list[str] = [_scatter(variates, labels["test"], pair,
                                   folder / "component0_scatter.png")]
    report["maps"] = {}
    report["figures"] = figures
    if config.data.dataset != "neuro":
        write_json(run.root / "links.json", report)
        return report
    loaded = load_run(out, device=device)
    grid = loaded.datamodule.cohort.grid
    truth = ground_truth(loaded)
    brain = loaded.datamodule.cohort.mask
    volumes, _ = _inputs(loaded, "test")
    encoders = loaded.model.probe_encoders()[""]
    covariates = loaded.datamodule.cohort.covariates
    test_rows = loaded.datamodule.split_rows("test")
    if "severity" in covariates:
        severity = covariates["severity"].to_numpy(dtype=float)[test_rows]
        report["severity_correlation"] = {
            m: [float(np.corrcoef(variates[m][:, c], severity)[0, 1])
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
                volume, grid.affine, folder / f"{key}.nii.gz",
                f"{modality}: canonical variate {component} (test r = "
                f"{result.test_correlations[component]:.2f})", figures)
            if modality in truth:
                report.setdefault("localisation_auc", {})[key] = localisation_auc(
                    volume, truth[modality], brain)
    write_json(loaded.run.root / "links.json", report)
    return report


def _scatter(variates: dict[str, np.ndarray], labels: np.ndarray, pair: list[str],
             path: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.0), dpi=110)
    for label in np.unique(labels):
        keep = labels == label
        ax.scatter(variates[pair[0]][keep, 0], variates[pair[1]][keep, 0], s=14,
                   label=f"label {label}", alpha=0.8)
    ax.set_xlabel(f"{pair[0]} canonical variate 1")
    ax.set_ylabel(f"{pair[1]} canonical variate 1")
    ax.set_title("Test subjects in the shared subspace")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return str(cfg.save_figure(fig, path))
