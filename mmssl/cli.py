"""The ``mmssl`` command: a table of subcommands, each a parser and a handler; no logic.

    mmssl run      [--preset P ...] [--config FILE] [--objective NAME] [--out DIR] ...
    mmssl pretrain [same flags]          mmssl evaluate RUN_DIR
    mmssl sweep    --objectives CR,XX,RR [--methods ae,dccae] [--folds all --seeds 1,2,3] --out DIR
    mmssl claims   SWEEP_DIR | --scores FILE...    mmssl report DIR
    mmssl simulate --out DIR    mmssl manifest BIDS_DIR    mmssl falff BIDS_DIR|BOLD
    mmssl saliency RUN_DIR      mmssl links RUN_DIR        mmssl generate RUN_DIR
    mmssl list

Every problem a user can cause ends with one line naming the input and exit status 2 (1 for a
diverging run, 130 for Ctrl-C); see :mod:`mmssl.errors`.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser
from rich.console import Console
from rich.table import Table as RichTable

from mmssl import config as cfg
from mmssl.errors import ConfigError, MmsslError
from mmssl.plugins import load_plugins
from mmssl.settings import load_yaml_text

console = Console()


# ----------------------------------------------------------------------------------- flags


def _config_flags(parser: ArgumentParser, *, objective: bool = True) -> None:
    parser.add_argument("--preset", action="append", type=str, default=None,
                        help="packaged preset, repeatable: dataset first, method second "
                        "(--preset two_view_mnist --preset dccae); "
                        + ", ".join(cfg.preset_names()))
    parser.add_argument("--config", type=str | None, default=None, help="YAML run configuration")
    parser.add_argument("--method", type=str | None, default=None, help="method (see `list`)")
    if objective:
        parser.add_argument("--objective", type=str | None, default=None,
                            help="taxonomy objective, e.g. CR-XX (see `mmssl list`)")
    parser.add_argument("--data-dir", type=str | None, default=None,
                        help="directory with MNIST-layout IDX files (default: embedded subset)")
    parser.add_argument("--dataset", type=str | None, default=None,
                        help="dataset (see `mmssl list`)")
    parser.add_argument("--manifest", type=str | None, default=None,
                        help="neuro: manifest CSV (subject, session, label, one column per "
                        "modality, covariates)")
    parser.add_argument("--on-bad-row", type=str | None, default=None,
                        help="neuro: error (default, list every problem) or skip (report them)")
    parser.add_argument("--cache-dir", type=str | None, default=None,
                        help="neuro: preprocessing cache folder (default: beside the manifest)")
    parser.add_argument("--strict-grid", type=bool | None, default=None,
                        help="neuro: require a row's modalities on one voxel grid (true/false)")
    parser.add_argument("--modalities", type=str | None, default=None,
                        help="comma-separated modalities, e.g. rotated,noisy")
    parser.add_argument("--epochs", type=int | None, default=None)
    parser.add_argument("--batch-size", type=int | None, default=None)
    parser.add_argument("--seed", type=int | None, default=None)
    parser.add_argument("--fold", type=int | None, default=None)
    parser.add_argument("--accelerator", type=str | None, default=None,
                        help="auto (default), cpu, gpu, mps")
    parser.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                        help="override any key: --set optim.lr=1e-3 (repeatable)")


def _parse_value(text: str) -> Any:
    try:
        value = load_yaml_text(text)
    except Exception:  # noqa: BLE001 - not YAML: the text itself
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _overrides(args: Any) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for flag, dotted in cfg.SHORTCUTS.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        if flag == "modalities":
            value = [m.strip() for m in str(value).split(",") if m.strip()]
        overrides[dotted] = value
    for item in args.set or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
        key, text = item.split("=", 1)
        overrides[key.strip()] = _parse_value(text)
    return overrides


def _config_file(args: Any) -> Path | None:
    if not args.config:
        return None
    path = Path(args.config).expanduser()
    if not path.is_file():
        raise ConfigError(f"--config {args.config}: no such file")
    return path


def _resolved(args: Any) -> cfg.RunConfig:
    return cfg.resolve(args.preset or [], _config_file(args), _overrides(args))


def _given_config_flags(args: Any) -> list[str]:
    given = [f"--{flag.replace('_', '-')}" for flag in ("preset", "config", *cfg.SHORTCUTS)
             if getattr(args, flag, None) is not None]
    return given + (["--set"] if args.set else [])


def _print_table(table: Any) -> None:
    console.print(table.to_rich())


# -------------------------------------------------------------------------------- handlers


def cmd_train(args: Any, *, evaluate: bool) -> int:
    from mmssl.analysis.tables import metrics_table
    from mmssl.runs.evaluation import train_and_evaluate
    from mmssl.runs.training import pretrain

    command = "run" if evaluate else "pretrain"
    if args.resume:
        if args.out is None:
            raise ConfigError("--resume needs --out RUN_DIR (the run to continue)")
        given = _given_config_flags(args)
        if given:
            raise ConfigError(f"--resume continues {args.out} with its saved config.yaml; drop "
                              f"{', '.join(given)}")
        config, out = None, Path(args.out)
    else:
        config = _resolved(args)
        out = Path(args.out) if args.out else (
            Path("runs") / f"{config.model_name}-seed{config.seed}-fold{config.data.fold}")
    if evaluate:
        metrics = train_and_evaluate(config, out, resume=args.resume, command=command)
        if not metrics:  # a data-parallel worker process
            return 0
        _print_table(metrics_table(metrics, f"Linear probe — {out}"))
    else:
        checkpoint = pretrain(config, out, resume=args.resume, command=command)
        console.print(f"pretrained: {checkpoint}", soft_wrap=True)
    console.print(f"run directory: {out}", soft_wrap=True)
    return 0


def cmd_evaluate(args: Any) -> int:
    from mmssl.analysis.tables import metrics_table
    from mmssl.runs.evaluation import evaluate

    metrics = evaluate(Path(args.run_dir), device=args.device)
    _print_table(metrics_table(metrics, f"Linear probe — {args.run_dir}"))
    console.print(f"metrics: {Path(args.run_dir) / 'metrics.json'}", soft_wrap=True)
    return 0


def _int_list(text: str | None, flag: str) -> tuple[int, ...] | str:
    if not text:
        return ()
    if text.strip() == "all":
        return "all"
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected comma-separated integers or 'all'") \
            from None


def _names(text: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (text or "").split(",") if v.strip())


def cmd_sweep(args: Any) -> int:
    from mmssl.analysis.sweeps import write_sweep_results
    from mmssl.runs.launch import Launcher
    from mmssl.runs.sweep import SweepRequest, plan_sweep, run_sweep

    listed_folds = _int_list(args.folds, "--folds")
    folds = (tuple(range(_resolved(args).data.num_folds)) if isinstance(listed_folds, str)
             else listed_folds)
    listed_seeds = _int_list(args.seeds, "--seeds")
    if isinstance(listed_seeds, str):
        raise ConfigError("--seeds: list the seeds, e.g. --seeds 1,2,3")
    seeds = listed_seeds
    if any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds {args.seeds}: seeds must be ≥ 0")
    request = SweepRequest(presets=tuple(args.preset or ()), config_file=_config_file(args),
                           overrides=_overrides(args), objectives=_names(args.objectives),
                           methods=_names(args.methods), folds=tuple(folds),
                           seeds=tuple(seeds), method_presets=not args.no_method_presets)
    launcher = Launcher(kind=args.launcher, jobs=args.jobs, slurm_partition=args.slurm_partition,
                        slurm_gpus=args.slurm_gpus, slurm_cpus=args.slurm_cpus,
                        slurm_minutes=args.slurm_minutes)
    sweep = run_sweep(plan_sweep(request), Path(args.out), launcher)
    results = write_sweep_results(sweep)
    _print_table(results.table)
    console.print(f"table: {sweep.results_markdown} and {sweep.results_csv}; every run: "
                  f"{sweep.scores}", soft_wrap=True)
    if results.figure:
        console.print(f"figure: {results.figure}", soft_wrap=True)
    if results.mode_figure:
        console.print(f"mode effects: {results.mode_figure}", soft_wrap=True)
    return 0


def cmd_claims(args: Any) -> int:
    from mmssl import io
    from mmssl.analysis.claims import (
        check_sweep,
        claims_from_files,
        claims_markdown,
        claims_table,
        write_claims,
    )
    from mmssl.runs.rundir import SweepDir

    if args.scores:
        report = claims_from_files([Path(p) for p in args.scores],
                                   [Path(p) for p in args.links or []], alpha=args.alpha)
        title = "The paper's claims on " + ", ".join(Path(p).name for p in args.scores)
    else:
        if not args.sweep_dir:
            raise ConfigError("give a sweep directory, or --scores FILE [--links FILE]")
        sweep = SweepDir(Path(args.sweep_dir))
        report = check_sweep(sweep, permutations=args.permutations, alpha=args.alpha)
        json_path, md_path = write_claims(sweep, report)
        title = f"The paper's claims on {args.sweep_dir}"
        console.print(f"claims: {md_path} and {json_path}", soft_wrap=True)
    _print_table(claims_table(report, title))
    if args.markdown:
        io.write_text(Path(args.markdown), claims_markdown(report, title))
        console.print(f"markdown: {args.markdown}", soft_wrap=True)
    return 0


def cmd_generate(args: Any) -> int:
    from mmssl.runs.evaluation import generate

    path = generate(Path(args.run_dir), n=args.n, split=args.split, device=args.device)
    console.print(f"generations: {path}", soft_wrap=True)
    return 0


#: ``mmssl simulate`` flags → :class:`~mmssl.data.neuro.simulate.SimulationSettings` fields.
SIMULATE_FLAGS: tuple[str, ...] = (
    "subjects", "seed", "sessions", "patient_fraction", "unlabelled_fraction", "voxel_size",
    "t1_effect", "falff_effect", "coupling", "noise", "falff_noise", "sites",
    "missing_falff_fraction", "bids", "bold_timepoints", "repetition_time",
)


def cmd_simulate(args: Any) -> int:
    from mmssl.data.neuro.simulate import SimulationSettings, simulate_cohort

    given = {name: getattr(args, name) for name in SIMULATE_FLAGS
             if getattr(args, name) is not None}
    try:
        settings = SimulationSettings(**given)
    except ValueError as error:
        raise ConfigError(f"mmssl simulate: {error}") from None
    manifest = simulate_cohort(Path(args.out), settings)
    console.print(f"simulated cohort: {manifest}", soft_wrap=True)
    console.print(f"train on it: mmssl run --preset neuro-quick --manifest {manifest}",
                  soft_wrap=True)
    return 0


def cmd_manifest(args: Any) -> int:
    from mmssl.data.neuro.bids import manifest_from_bids, summarize_manifest

    out = Path(args.out)
    manifest = manifest_from_bids(
        args.bids_dir, t1=args.t1, falff_pipeline=args.falff_pipeline,
        label_column=args.label_column, covariates=_names(args.covariates), task=args.task,
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
                                 low=args.low, high=args.high, overwrite=args.overwrite)
        written = sum(o.status == "written" for o in outputs)
        console.print(f"fALFF maps: {written} written, {len(outputs) - written} already there "
                      f"(in {source / 'derivatives' / 'falff'})", soft_wrap=True)
        return 0
    if not args.out:
        raise ConfigError("--out FILE.nii.gz is needed when the source is one BOLD series")
    image = compute_falff(source, args.mask, tr=args.tr, low=args.low, high=args.high)
    io.save_image(Path(args.out), image)
    console.print(f"fALFF map: {args.out}", soft_wrap=True)
    return 0


def cmd_saliency(args: Any) -> int:
    from mmssl.runs.brain import run_saliency

    dims = [int(d) for d in _names(args.latent_dims)]
    report = run_saliency(Path(args.run_dir), split=args.split, samples=args.samples,
                          noise=args.noise, latent_dims=dims, device=args.device)
    table = RichTable(title=f"Saliency — {args.run_dir} ({report['subjects']} {args.split} "
                            "subjects)")
    table.add_column("modality")
    table.add_column("maps", justify="right")
    table.add_column("localisation ROC AUC (simulated truth)")
    for modality, entry in report["modalities"].items():
        aucs = ", ".join(f"{k} {v:.3f}" for k, v in entry["localisation_auc"].items()) or "–"
        table.add_row(modality, str(len(entry["maps"])), aucs)
    console.print(table)
    console.print(f"maps and figures: {Path(args.run_dir) / 'saliency'}", soft_wrap=True)
    return 0


def cmd_links(args: Any) -> int:
    import numpy as np

    from mmssl.runs.brain import run_links

    modalities = list(_names(args.modalities)) or None
    report = run_links(Path(args.run_dir), components=args.components,
                       permutations=args.permutations, modalities=modalities,
                       samples=args.samples, pca=args.pca or None, device=args.device)
    table = RichTable(title=f"Multimodal links — {args.run_dir}: CCA fitted on train, scored "
                            "on test")
    for column in ("component", "train r", "test r", "null 95%", "p"):
        table.add_column(column, justify="right")
    null = np.asarray(report["null_correlations"], dtype=float)
    for k, (train_r, test_r, p) in enumerate(zip(report["train_correlations"],
                                                 report["test_correlations"],
                                                 report["p_values"], strict=True)):
        q95 = float(np.nanquantile(null[:, k], 0.95)) if null.size else float("nan")
        table.add_row(str(k + 1), f"{train_r:.3f}", f"{test_r:.3f}", f"{q95:.3f}", f"{p:.3f}")
    console.print(table)
    if "severity_correlation" in report:
        console.print("correlation of the canonical variates with the simulated severity: "
                      + json.dumps(report["severity_correlation"]), soft_wrap=True)
    console.print(f"report: {Path(args.run_dir) / 'links.json'}", soft_wrap=True)
    return 0


def cmd_report(args: Any) -> int:
    from mmssl.analysis.report import build_report

    html_path, md_path = build_report(Path(args.directory))
    console.print(f"report: {html_path} and {md_path}", soft_wrap=True)
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


# ---------------------------------------------------------------------- the command table


def _train_parser(parser: ArgumentParser) -> None:
    _config_flags(parser)
    parser.add_argument("--out", type=str | None, default=None, help="run directory")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint")


def _evaluate_parser(parser: ArgumentParser) -> None:
    parser.add_argument("run_dir", type=str)
    parser.add_argument("--device", type=str | None, default=None)


def _sweep_parser(parser: ArgumentParser) -> None:
    parser.add_argument("--objectives", type=str | None, default=None,
                        help="comma-separated taxonomy objectives, e.g. CR,XX,RR,CR-XX-CC-RR, "
                        "or all (the 15 combinations; CR is the unimodal model)")
    parser.add_argument("--methods", type=str | None, default=None,
                        help="comma-separated baselines, e.g. supervised,ae,dccae,mmvae")
    parser.add_argument("--no-method-presets", action="store_true",
                        help="run baselines with the given configuration only, not composed "
                        "with their own presets (their papers' optimiser, batch, epochs)")
    parser.add_argument("--folds", type=str | None, default=None,
                        help="folds to run, e.g. 0,1,2 or all (default: --fold)")
    parser.add_argument("--seeds", type=str | None, default=None,
                        help="seeds to run, e.g. 1,2,3 (default: --seed)")
    parser.add_argument("--launcher", type=str, default="sequential",
                        help="sequential (default), local (--jobs at a time) or slurm (submitit)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (local, slurm)")
    parser.add_argument("--slurm-partition", type=str | None, default=None)
    parser.add_argument("--slurm-gpus", type=int, default=0, help="GPUs per run")
    parser.add_argument("--slurm-cpus", type=int, default=4, help="CPUs per run")
    parser.add_argument("--slurm-minutes", type=int, default=240, help="time limit per run")
    _config_flags(parser, objective=False)
    parser.add_argument("--out", type=str, required=True, help="sweep directory")


def _claims_parser(parser: ArgumentParser) -> None:
    parser.add_argument("sweep_dir", type=str | None, default=None, nargs="?")
    parser.add_argument("--scores", type=str, action="append", default=None,
                        help="decide from committed scores files instead (repeatable)")
    parser.add_argument("--links", type=str, action="append", default=None,
                        help="with --scores: committed links files (repeatable)")
    parser.add_argument("--markdown", type=str | None, default=None,
                        help="also write the verdicts as Markdown to this file")
    parser.add_argument("--alpha", type=float, default=0.05, help="level of every claim")
    parser.add_argument("--permutations", type=int, default=100,
                        help="permutations of the held-out link p-values")


def _generate_parser(parser: ArgumentParser) -> None:
    parser.add_argument("run_dir", type=str)
    parser.add_argument("--n", type=int, default=10, help="examples per row")
    parser.add_argument("--split", type=str, default="test", help="train, val or test")
    parser.add_argument("--device", type=str | None, default=None)


def _simulate_parser(parser: ArgumentParser) -> None:
    parser.add_argument("--out", type=str, required=True, help="cohort directory")
    helps = {
        "subjects": "number of subjects (default 100)",
        "seed": "seed (default 0)",
        "sessions": "sessions per subject (default 1)",
        "patient_fraction": "fraction of patients (default 0.5)",
        "unlabelled_fraction": "fraction of subjects without a label (default 0)",
        "voxel_size": "mm of the written MNI grid (default 3)",
        "t1_effect": "grey-matter loss at full severity in the T1 regions (default 0.22)",
        "falff_effect": "fALFF decrease at full severity in its regions (default 0.08)",
        "coupling": "structure–function coupling strength; 0 plants no link (default 0.1)",
        "noise": "T1 noise, relative (default 0.05)",
        "falff_noise": "fALFF noise, relative, before motion and site (default 0.25)",
        "sites": "scanner sites (default 3)",
        "missing_falff_fraction": "fraction of sessions without fALFF (default 0)",
        "bids": "also write a BIDS layout under OUT/bids (true/false)",
        "bold_timepoints": "with --bids: resting-state series of this many volumes (default 0)",
        "repetition_time": "TR of those series in s (default 2)",
    }
    types: dict[str, Any] = {"subjects": int, "seed": int, "sessions": int, "sites": int,
                             "bold_timepoints": int, "bids": bool}
    for name in SIMULATE_FLAGS:
        parser.add_argument(f"--{name.replace('_', '-')}", type=types.get(name, float) | None,
                            default=None, help=helps[name])


def _manifest_parser(parser: ArgumentParser) -> None:
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


def _falff_parser(parser: ArgumentParser) -> None:
    parser.add_argument("source", type=str,
                        help="a preprocessed 4-D BOLD series, or a BIDS folder (every fMRIPrep "
                        "preproc_bold of it)")
    parser.add_argument("--mask", type=str | None, default=None, help="brain mask (same grid)")
    parser.add_argument("--out", type=str | None, default=None, help="fALFF map (one series)")
    parser.add_argument("--tr", type=float | None, default=None,
                        help="repetition time in s (default: sidecar JSON or header)")
    parser.add_argument("--low", type=float, default=0.01, help="band low edge, Hz")
    parser.add_argument("--high", type=float, default=0.08, help="band high edge, Hz")
    parser.add_argument("--bold-pipeline", type=str, default="fmriprep")
    parser.add_argument("--task", type=str, default="rest")
    parser.add_argument("--overwrite", action="store_true")


def _saliency_parser(parser: ArgumentParser) -> None:
    parser.add_argument("run_dir", type=str)
    parser.add_argument("--split", type=str, default="test")
    parser.add_argument("--samples", type=int, default=16, help="SmoothGrad noise samples")
    parser.add_argument("--noise", type=float, default=0.1, help="noise σ / input range")
    parser.add_argument("--latent-dims", type=str | None, default=None,
                        help="also map these latent units, e.g. 0,5")
    parser.add_argument("--device", type=str | None, default=None)


def _links_parser(parser: ArgumentParser) -> None:
    parser.add_argument("run_dir", type=str)
    parser.add_argument("--components", type=int, default=3)
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--modalities", type=str | None, default=None, help="two, e.g. t1,falff")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--pca", type=int, default=10,
                        help="reduce each representation to this many PCA components first "
                        "(fitted on train; 0 = off)")
    parser.add_argument("--device", type=str | None, default=None)


def _report_parser(parser: ArgumentParser) -> None:
    parser.add_argument("directory", type=str, help="a run directory or a sweep directory")


def _no_arguments(parser: ArgumentParser) -> None:
    return None


@dataclass(frozen=True)
class Command:
    """One subcommand: its help, how its parser is built, and its handler."""

    name: str
    help: str
    arguments: Callable[[ArgumentParser], None]
    handler: Callable[[Any], int]
    #: how to continue after Ctrl-C ({out} is the --out value)
    resume_hint: str = ""


COMMANDS: tuple[Command, ...] = (
    Command("run", "pretrain, then evaluate", _train_parser,
            lambda a: cmd_train(a, evaluate=True), "mmssl run --resume --out {out}"),
    Command("pretrain", "pretrain only", _train_parser,
            lambda a: cmd_train(a, evaluate=False), "mmssl pretrain --resume --out {out}"),
    Command("evaluate", "linear evaluation of a run directory", _evaluate_parser, cmd_evaluate),
    Command("sweep", "several models × folds × seeds, one table and figure", _sweep_parser,
            cmd_sweep, "the same `mmssl sweep` command (finished runs are skipped)"),
    Command("claims", "the paper's claims, tested on a sweep", _claims_parser, cmd_claims),
    Command("report", "self-contained HTML (and Markdown) report", _report_parser, cmd_report),
    Command("generate", "PNG grid of reconstructions/generations", _generate_parser,
            cmd_generate),
    Command("simulate", "synthetic multimodal brain cohort", _simulate_parser, cmd_simulate),
    Command("manifest", "a manifest from a BIDS dataset (T1w + fALFF derivatives)",
            _manifest_parser, cmd_manifest),
    Command("falff", "fALFF maps from preprocessed resting-state series", _falff_parser,
            cmd_falff),
    Command("saliency", "brain maps of what drives the probe", _saliency_parser, cmd_saliency),
    Command("links", "multimodal links through a shared subspace", _links_parser, cmd_links),
    Command("list", "objectives, methods, datasets and presets", _no_arguments, cmd_list),
)

#: the subcommand parsers of the last :func:`build_parser` call, for error messages
SUBCOMMANDS: dict[str, ArgumentParser] = {}


def build_parser() -> ArgumentParser:
    """The full command-line parser."""
    parser = ArgumentParser(prog="mmssl", description="Multimodal self-supervised learning: "
                            "the Domino taxonomy (CR, XX, CC, RR) and its evaluation.",
                            exit_on_error=False)
    sub = parser.add_subcommands(dest="command")
    for command in COMMANDS:
        child = ArgumentParser(description=command.help, exit_on_error=False)
        command.arguments(child)
        SUBCOMMANDS[command.name] = child
        sub.add_subcommand(command.name, child, help=command.help)
    return parser


def _configure_logging() -> None:
    from rich.logging import RichHandler

    logger = logging.getLogger("mmssl")
    if not logger.handlers:
        logger.addHandler(RichHandler(console=console, show_path=False, show_time=False))
    logger.setLevel(logging.INFO)
    logger.propagate = False
    # Lightning's banner lines (accelerators found, tips) are noise for our users. Lightning
    # sets its loggers to INFO when imported, so import it first.
    import lightning  # noqa: F401

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _error(message: str) -> None:
    console.print(f"[red]mmssl: error:[/red] {message}", highlight=False, soft_wrap=True,
                  markup=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mmssl`` console script."""
    _configure_logging()
    try:
        load_plugins()
    except MmsslError as error:
        _error(str(error).replace("[", "\\["))
        return error.exit_code
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except Exception as error:  # noqa: BLE001 - jsonargparse's ArgumentError and friends
        name = next((a for a in argv if not a.startswith("-")), "")
        message = " ".join(str(error).split())
        subcommand = SUBCOMMANDS.get(name)
        if subcommand is not None and "nrecognized argument" in message:
            flags = sorted({o for a in subcommand._actions for o in a.option_strings
                            if o.startswith("--") and o != "--help"})
            message += f"; valid flags of `mmssl {name}`: {', '.join(flags)}"
        _error(f"{message}; see `mmssl {name} --help`".replace("[", "\\["))
        return 2
    name = args.command
    commands = {c.name: c for c in COMMANDS}
    if name not in commands:
        parser.print_help()
        return 2
    command = commands[name]
    sub_args = args.get(name)
    try:
        return command.handler(sub_args)
    except MmsslError as error:
        _error(str(error).replace("[", "\\["))
        return error.exit_code
    except KeyboardInterrupt:
        out = getattr(sub_args, "out", None) or getattr(sub_args, "run_dir", None) or ""
        hint = (f"; continue with {command.resume_hint.format(out=out)}"
                if command.resume_hint else "; run the command again to finish")
        _error(f"interrupted{hint}")
        return 130
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as error:
        # user input rejected by a library (bad value, missing file, no permission)
        _error(str(error).replace("[", "\\["))
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
