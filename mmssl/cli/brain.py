"""``mmssl simulate``, ``manifest``, ``falff``, ``saliency``, ``regions``, ``links``, ``audit``,
``list``.

Handlers import the library when they run, so ``mmssl --help`` and argument errors answer at
once, without loading torch and Lightning."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from jsonargparse import ArgumentParser
from rich.table import Table as RichTable

from mmssl import config as cfg
from mmssl.cli.common import console, names
from mmssl.errors import ConfigError

#: ``mmssl simulate`` flags → :class:`~mmssl.data.neuro.simulate.SimulationSettings` fields.
SIMULATE_FLAGS: tuple[str, ...] = (
    "subjects", "seed", "sessions", "patient_fraction", "unlabelled_fraction", "voxel_size",
    "t1_effect", "falff_effect", "coupling", "noise", "falff_noise", "falff_noise_fwhm",
    "falff_field_sd", "sites",
    "missing_falff_fraction", "shared_anatomy", "bids", "bold_timepoints", "repetition_time",
)


def cmd_simulate(args: Any) -> int:
    from mmssl.data.neuro.simulate import SimulationSettings, simulate_cohort

    given = {name: getattr(args, name) for name in SIMULATE_FLAGS
             if getattr(args, name) is not None}
    try:
        settings = SimulationSettings(**given)
    except ValueError as error:
        raise ConfigError(f"mmssl simulate: {error}") from None
    if args.workers < 1:
        raise ConfigError(f"--workers {args.workers}: expected at least 1 process")
    manifest = simulate_cohort(Path(args.out), settings, workers=args.workers)
    console.print(f"simulated cohort: {manifest}", soft_wrap=True)
    console.print(f"train on it: mmssl run --preset neuro-quick --manifest {manifest}",
                  soft_wrap=True)
    return 0


def cmd_manifest(args: Any) -> int:
    from mmssl.data.neuro.bids import manifest_from_bids, summarize_manifest

    out = Path(args.out)
    manifest = manifest_from_bids(
        args.bids_dir, t1=args.t1, falff_pipeline=args.falff_pipeline,
        label_column=args.label_column, covariates=names(args.covariates), task=args.task,
        space=args.space, out_path=out)
    manifest.write(out)
    console.print(summarize_manifest(manifest), soft_wrap=True)
    console.print(f"manifest: {out}", soft_wrap=True)
    return 0


def cmd_falff(args: Any) -> int:
    from mmssl import io
    from mmssl.data.neuro.falff import compute_falff, falff_for_bids

    source = Path(args.source)
    if source.is_dir():
        outputs = falff_for_bids(source, bold_pipeline=args.bold_pipeline, task=args.task,
                                 low=args.low, high=args.high, detrend=args.detrend == "linear",
                                 overwrite=args.overwrite)
        written = sum(o.status == "written" for o in outputs)
        console.print(f"fALFF maps: {written} written, {len(outputs) - written} already there "
                      f"(in {source / 'derivatives' / 'falff'})", soft_wrap=True)
        return 0
    if not args.out:
        raise ConfigError("--out FILE.nii.gz is needed when the source is one BOLD series")
    image = compute_falff(source, args.mask, tr=args.tr, low=args.low, high=args.high,
                          detrend=args.detrend == "linear")
    io.save_image(Path(args.out), image)
    console.print(f"fALFF map: {args.out}", soft_wrap=True)
    return 0


def map_settings(args: Any) -> Any:
    from mmssl.runs.brainrun import MapSettings

    text = str(args.units).strip()
    if text != "all" and not (text.isdigit() and int(text) > 0):
        raise ConfigError(f"--units {args.units!r}: expected a positive number of latent units "
                          "or all")
    units = None if text == "all" else int(text)
    for flag, value in (("--eg-samples", args.eg_samples), ("--eg-references", args.eg_references)):
        if value < 1:
            raise ConfigError(f"{flag} {value}: expected a positive number")
    return MapSettings(units=units, percentile=args.percentile, samples=args.samples,
                       noise=args.noise, ig_steps=args.ig_steps, eg_samples=args.eg_samples,
                       eg_references=args.eg_references, batch_size=args.batch_size)


def cmd_saliency(args: Any) -> int:
    from mmssl.runs.saliency import run_saliency

    report = run_saliency(Path(args.run_dir), split=args.split, methods=names(args.methods),
                          settings=map_settings(args), device=args.device)
    table = RichTable(title=f"Saliency — {args.run_dir} ({report['subjects']} {args.split} "
                            f"subjects, {report['patients']} patients)")
    table.add_column("modality")
    table.add_column("maps", justify="right")
    table.add_column("localisation ROC AUC of the group maps (simulated truth)")
    for modality, entry in report["modalities"].items():
        aucs = ", ".join(f"{k} {v:.3f}" for k, v in entry["localisation_auc"].items()) or "–"
        table.add_row(modality, str(len(entry["maps"])), aucs)
    console.print(table)
    console.print(f"maps and figures: {Path(args.run_dir) / 'saliency'}", soft_wrap=True)
    return 0


def cmd_regions(args: Any) -> int:
    import pandas as pd

    from mmssl.runs.regions import run_regions

    report = run_regions(Path(args.run_dir), method=args.method, split=args.split,
                         permutations=args.permutations, alpha=args.alpha,
                         covariates=names(args.covariates), settings=map_settings(args),
                         device=args.device, smooth_mm=args.smooth)
    clusters = pd.read_csv(Path(args.run_dir) / "regions.csv")
    table = RichTable(title=f"Regions separating patients from controls — {args.run_dir} "
                            f"({report['subjects']} subjects, {args.method} maps, FWE p < "
                            f"{args.alpha}, {args.permutations} permutations)")
    for column in ("modality", "cluster", "region at peak", "peak t", "peak MNI (mm)",
                   "size (mm³)", "covers"):
        table.add_column(column, justify="right" if column in ("peak t", "size (mm³)")
                         else "left")
    for row in clusters.head(args.rows).itertuples():
        table.add_row(row.modality, str(row.cluster), str(row.peak_region),
                      f"{row.peak_stat:+.2f}", f"{row.peak_x:.0f}, {row.peak_y:.0f}, "
                      f"{row.peak_z:.0f}", f"{row.volume_mm3:.0f}", str(row.top_regions))
    console.print(table)
    for modality, entry in report["modalities"].items():
        line = f"{modality}: {entry['significant_voxels']} significant voxels, " \
               f"{entry['clusters']} clusters, max |t| {entry['max_abs_t']:.2f}"
        if "localisation_auc" in entry:
            line += (f"; localisation AUC of the t map {entry['localisation_auc']['t']:.3f}; "
                     f"planted region ranked {entry['planted_rank_in_summary']} among regions")
        if "input_localisation_auc" in entry:
            line += (f" (the inputs themselves, same test: "
                     f"{entry['input_localisation_auc']:.3f})")
        if entry.get("input_abs_t_correlation") is not None:
            line += (f"; its |t| follows the inputs' own test at r = "
                     f"{entry['input_abs_t_correlation']:.2f}")
        console.print(line, soft_wrap=True)
    console.print(f"table: {Path(args.run_dir) / 'regions.csv'}; maps and figures: "
                  f"{Path(args.run_dir) / 'regions'}", soft_wrap=True)
    return 0


def cmd_links(args: Any) -> int:
    import numpy as np

    from mmssl.runs.links import run_links

    modalities = list(names(args.modalities)) or None
    report = run_links(Path(args.run_dir), components=args.components,
                       permutations=args.permutations, modalities=modalities,
                       pca=args.pca or None, alpha=args.alpha, confounds=args.confounds,
                       harmonize=args.harmonize, device=args.device)
    beyond = f" beyond {', '.join(report['confounds'])}" if report["confounds"] else ""
    if report["harmonize"] == "site":
        beyond += " (removed within each site, sites harmonised)"
    table = RichTable(title=f"Multimodal links{beyond} — {args.run_dir}: CCA fitted on train, "
                            "scored on test")
    for column in ("component", "train r", "test r", "null 95%", "p", "p (Holm)"):
        table.add_column(column, justify="right")
    null = np.asarray(report["null_correlations"], dtype=float)
    for k, (train_r, test_r, p, p_holm) in enumerate(zip(
            report["train_correlations"], report["test_correlations"], report["p_values"],
            report["p_holm"], strict=True)):
        q95 = float(np.nanquantile(null[:, k], 0.95)) if null.size else float("nan")
        table.add_row(str(k + 1), f"{train_r:.3f}", f"{test_r:.3f}", f"{q95:.3f}", f"{p:.3f}",
                      f"{p_holm:.3f}")
    console.print(table)
    for row in report.get("table", []):
        console.print(f"pair {row['component']}: " + " ↔ ".join(
            f"{m}: {row.get(f'{m}_regions', '–')}" for m in report["modalities"]),
            soft_wrap=True)
    console.print(f"report: {Path(args.run_dir) / 'links.json'}", soft_wrap=True)
    return 0


def cmd_audit(args: Any) -> int:
    import pandas as pd

    from mmssl.runs.audit import run_audit

    report = run_audit(Path(args.run_dir), folds=args.folds, components=args.components,
                       seed=args.seed, device=args.device)
    table = pd.DataFrame(report["table"])
    sources = list(dict.fromkeys(table["source"]))
    inputs = (f", inputs: the volumes' first {args.components} principal components"
              if args.components else "")
    rich = RichTable(title=f"What the representation encodes — {args.run_dir} "
                           f"({args.folds}-fold cross-validated linear decoding; z: the "
                           f"representation{inputs})")
    for column in ("variable", "metric", "chance", *sources):
        rich.add_column(column, justify="left" if column in ("variable", "metric") else "right")
    for variable, group in table.groupby("variable", sort=False):
        scores = dict(zip(group["source"], group["score"], strict=True))
        first = group.iloc[0]
        rich.add_row(str(variable), str(first["metric"]), f"{first['chance']:.2f}",
                     *(f"{scores[s]:.3f}" if s in scores else "–" for s in sources))
    console.print(rich)
    objective = report.get("objective", {})
    if "train_unaugmented" in objective and "val_unaugmented" in objective:
        logged = (f"; logged: final training {objective['train_logged_final']:.3f}, first "
                  f"validation {objective['val_logged_first']:.3f}"
                  if "train_logged_final" in objective and "val_logged_first" in objective
                  else "")
        console.print(
            f"pretraining loss without augmentation: training subjects "
            f"{objective['train_unaugmented']:.3f}, validation subjects "
            f"{objective['val_unaugmented']:.3f}{logged} (a training loss far below the "
            "unaugmented one is a shortcut through the augmentation; a validation loss far "
            "above the training subjects' is memorisation)", soft_wrap=True)
    console.print(f"scores: {Path(args.run_dir) / 'audit.csv'}; figure: "
                  f"{Path(args.run_dir) / 'audit.png'}", soft_wrap=True)
    return 0


def cmd_list(args: Any) -> int:
    from mmssl.data import DATASETS
    from mmssl.methods import METHODS
    from mmssl.objectives.taxonomy import MODES, all_objectives

    modes = RichTable(title="taxonomy modes (an objective is any combination, e.g. CR-XX)")
    for column in ("mode", "cross-modal", "local features", "what"):
        modes.add_column(column)
    for mode in MODES.values():
        modes.add_row(mode.name, "yes" if mode.cross_modal else "no",
                      "yes" if mode.needs_local else "no", mode.description)
    console.print(modes)
    console.print("objectives: " + ", ".join(all_objectives()), soft_wrap=True)
    methods = RichTable(title="methods (--method; baselines also have a preset of that name)")
    for column in ("method", "what it trains", "paper", "relates modalities", "decoders"):
        methods.add_column(column)
    for name, method in METHODS.items():
        methods.add_row(name, method.summary, method.paper,
                        "yes" if method.traits.relates_modalities else "–",
                        "yes" if method.traits.has_decoders else "–")
    console.print(methods)
    datasets = RichTable(title="datasets (--dataset)")
    datasets.add_column("dataset")
    datasets.add_column("modalities")
    datasets.add_column("source")
    for name in sorted(DATASETS):
        spec = DATASETS[name]
        datasets.add_row(name, ", ".join(spec.modalities) or "named by you", spec.summary)
    console.print(datasets)
    presets = RichTable(title="presets (--preset NAME, repeatable: dataset first, method second)")
    presets.add_column("name")
    presets.add_column("what it sets")
    for name in cfg.preset_names():
        presets.add_row(name, cfg.preset_description(name))
    console.print(presets)
    return 0


def simulate_parser(parser: ArgumentParser) -> None:
    parser.add_argument("--out", type=str, required=True, help="cohort directory")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes simulating subjects in parallel (same files for any "
                        "number)")
    helps = {
        "subjects": "number of subjects (default 100)",
        "seed": "seed (default 0)",
        "sessions": "sessions per subject (default 1)",
        "patient_fraction": "fraction of patients (default 0.5)",
        "unlabelled_fraction": "fraction of subjects without a label (default 0)",
        "voxel_size": "mm of the written MNI grid (default 3)",
        "t1_effect": "grey-matter loss at full severity in the T1 regions (default 0.22)",
        "falff_effect": "fALFF decrease at full severity in its regions (default 0.08)",
        "coupling": "structure–function coupling strength; 0 plants no link (default 0.1; at "
                    "400 subjects a link shows from 0.2: BRAIN.md, \"A learner that fits the "
                    "sample size\")",
        "noise": "T1 noise, relative (default 0.05)",
        "falff_noise": "fALFF noise, relative, before motion and site (default 0.25)",
        "falff_noise_fwhm": "FWHM in mm of the fALFF noise field (default 8; BRAIN.md, \"The fALFF "
                            "effect, localised\")",
        "falff_field_sd": "SD (log scale) of each subject's functional field, FWHM 12 mm "
                          "(default 0.12)",
        "sites": "scanner sites (default 3)",
        "missing_falff_fraction": "fraction of sessions without fALFF (default 0)",
        "shared_anatomy": "correlation of each subject's fALFF field with its anatomical "
                          "field, 0-1: fALFF follows the subject's own anatomy (default 0)",
        "bids": "also write a BIDS layout under OUT/bids (true/false)",
        "bold_timepoints": "with --bids: resting-state series of this many volumes (default 0)",
        "repetition_time": "TR of those series in s (default 2)",
    }
    types: dict[str, Any] = {"subjects": int, "seed": int, "sessions": int, "sites": int,
                             "bold_timepoints": int, "bids": bool}
    for name in SIMULATE_FLAGS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=types.get(name, float) | None,
                            default=None, help=helps[name])


def manifest_parser(parser: ArgumentParser) -> None:
    parser.add_argument("bids_dir", type=str)
    parser.add_argument("--out", type=str, default="manifest.csv", help="manifest CSV to write")
    parser.add_argument("--t1", type=str, default="raw",
                        help="raw (sub-*/anat/*_T1w) or derivatives (fMRIPrep, MNI space)")
    parser.add_argument("--falff-pipeline", type=str, default="falff",
                        help="derivatives folder holding the fALFF maps")
    parser.add_argument("--label-column", type=str, default="diagnosis",
                        help="participants.tsv/sessions.tsv column with the diagnosis")
    parser.add_argument("--covariates", type=str, default="age,sex,site")
    parser.add_argument("--task", type=str, default="rest")
    parser.add_argument("--space", type=str, default="MNI152NLin2009cAsym")


def falff_parser(parser: ArgumentParser) -> None:
    parser.add_argument("source", type=str,
                        help="a preprocessed 4-D BOLD series, or a BIDS folder (every fMRIPrep "
                        "preproc_bold of it)")
    parser.add_argument("--mask", type=str | None, default=None, help="brain mask (same grid)")
    parser.add_argument("--out", type=str | None, default=None, help="fALFF map (one series)")
    parser.add_argument("--tr", type=float | None, default=None,
                        help="repetition time in s (default: sidecar JSON or header)")
    parser.add_argument("--low", type=float, default=0.01, help="band low edge, Hz")
    parser.add_argument("--high", type=float, default=0.08, help="band high edge, Hz")
    parser.add_argument("--detrend", type=Literal["linear", "mean"], default="linear",
                        help="before the transform, remove the least-squares line (linear) or "
                        "only the mean")
    parser.add_argument("--bold-pipeline", type=str, default="fmriprep")
    parser.add_argument("--task", type=str, default="rest")
    parser.add_argument("--overwrite", action="store_true")


def map_flags(parser: ArgumentParser) -> None:
    parser.add_argument("--units", type=str, default="16",
                        help="latent maps: the most variable units to map, or all")
    parser.add_argument("--percentile", type=float, default=95.0,
                        help="latent maps: per-unit threshold (percentile)")
    parser.add_argument("--samples", type=int, default=16, help="SmoothGrad noise samples")
    parser.add_argument("--noise", type=float, default=0.1, help="SmoothGrad σ / input range")
    parser.add_argument("--ig-steps", type=int, default=32, help="Integrated Gradients steps")
    parser.add_argument("--eg-samples", type=int, default=32,
                        help="expected gradients: draws (reference, path point) per volume")
    parser.add_argument("--eg-references", type=int, default=128,
                        help="expected gradients: training volumes drawn as references (at most)")
    parser.add_argument("--batch-size", type=int, default=4, help="volumes per chunk")
    parser.add_argument("--device", type=str | None, default=None)


def saliency_parser(parser: ArgumentParser) -> None:
    parser.add_argument("run_dir", type=str)
    parser.add_argument("--split", type=str, default="test",
                        help="subjects: train, val, test or all (labelled evaluation subjects)")
    parser.add_argument("--methods", type=str, default="latent,smoothgrad,ig",
                        help="latent (label-free unit gradients), smoothgrad, ig, eg (expected "
                        "gradients)")
    map_flags(parser)


def regions_parser(parser: ArgumentParser) -> None:
    parser.add_argument("run_dir", type=str)
    parser.add_argument("--method", type=str, default="ig",
                        help="per-subject maps to test: latent, smoothgrad, ig, eg (expected "
                        "gradients), or input (the preprocessed volumes: the model-free "
                        "reference analysis)")
    parser.add_argument("--split", type=str, default="all", help="subjects: train, val, "
                        "test or all")
    parser.add_argument("--permutations", type=int, default=1000,
                        help="max-T permutations for family-wise error")
    parser.add_argument("--alpha", type=float, default=0.05, help="FWE level")
    parser.add_argument("--covariates", type=str, default="age,sex,site",
                        help="covariates adjusted for (those the manifest has)")
    parser.add_argument("--rows", type=int, default=12, help="clusters shown")
    parser.add_argument("--smooth", type=float, default=0.0,
                        help="FWHM (mm) of a Gaussian smoothing of every subject's map inside "
                        "the brain before the test (0: none; VBM uses 8)")
    map_flags(parser)


def audit_parser(parser: ArgumentParser) -> None:
    parser.add_argument("run_dir", type=str)
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    parser.add_argument("--components", type=int, default=64,
                        help="PCA components of the volumes' reference (0: no reference)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the folds and models")
    parser.add_argument("--device", type=str | None, default=None)


def links_parser(parser: ArgumentParser) -> None:
    parser.add_argument("run_dir", type=str)
    parser.add_argument("--components", type=int, default=3)
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--modalities", type=str | None, default=None, help="two, e.g. t1,falff")
    parser.add_argument("--pca", type=int, default=10,
                        help="reduce each representation to this many PCA components first "
                        "(fitted on train; 0 = off)")
    parser.add_argument("--alpha", type=float, default=0.05, help="level of a significant link")
    parser.add_argument("--confounds", type=str, default="auto",
                        help="auto (neuro: diagnosis, age, sex, site), none, or covariates")
    parser.add_argument("--harmonize", type=str, default="auto",
                        help="site: remove the confounds within each site and equalise the "
                        "sites' scales (when the confounds include a site); none: site "
                        "indicators among the linear confounds; auto: site where every site "
                        "has enough training subjects, else none (said in the report)")
    parser.add_argument("--device", type=str | None, default=None)


