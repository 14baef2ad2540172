"""The ``mmssl`` command: subcommands only, the logic lives in the library.

    mmssl run      [--preset P | --config FILE] [--objective NAME] [--data-dir DIR] ...
    mmssl pretrain [same flags]
    mmssl evaluate RUN_DIR
    mmssl sweep    --objectives CR,XX,RR,CR-XX-CC-RR [--methods ae,dccae] ... --out DIR
    mmssl generate RUN_DIR
    mmssl simulate --out DIR --subjects N --seed S
    mmssl saliency RUN_DIR / mmssl links RUN_DIR
    mmssl report DIR / mmssl claims SWEEP_DIR
    mmssl list
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from jsonargparse import ArgumentParser
from rich.console import Console
from rich.table import Table

from mmssl import config as cfg

console = Console()

#: shortcut flag → dotted configuration key
SHORTCUTS: dict[str, str] = {
    "method": "method",
    "objective": "objective.name",
    "data_dir": "data.data_dir",
    "modalities": "data.modalities",
    "epochs": "trainer.epochs",
    "batch_size": "data.batch_size",
    "seed": "seed",
    "fold": "data.fold",
    "accelerator": "trainer.accelerator",
    "dataset": "data.dataset",
    "manifest": "data.manifest",
    "on_bad_row": "data.on_bad_row",
}


def _config_flags(parser: ArgumentParser, *, objective: bool = True) -> None:
    parser.add_argument("--preset", type=str | None, default=None,
                        help=f"packaged preset: {', '.join(cfg.preset_names())}")
    parser.add_argument("--config", type=str | None, default=None, help="YAML run configuration")
    parser.add_argument("--method", type=str | None, default=None, help="method (see `list`)")
    if objective:
        parser.add_argument("--objective", type=str | None, default=None,
                            help="taxonomy objective, e.g. CR-XX (see `mmssl list`)")
    parser.add_argument("--data-dir", type=str | None, default=None,
                        help="directory with MNIST-layout IDX files (default: embedded subset)")
    parser.add_argument("--dataset", type=str | None, default=None,
                        help=f"dataset: {', '.join(cfg.DATASETS)}")
    parser.add_argument("--manifest", type=str | None, default=None,
                        help="neuro: manifest CSV (subject, session, label, one column per "
                        "modality, covariates)")
    parser.add_argument("--on-bad-row", type=str | None, default=None,
                        help="neuro: error (default, list every problem) or skip (report them)")
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
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _overrides(args: Any) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for flag, dotted in SHORTCUTS.items():
        value = getattr(args, flag, None)
        if value is None:
            continue
        if flag == "modalities":
            value = [m.strip() for m in str(value).split(",") if m.strip()]
        overrides[dotted] = value
    for item in args.set or []:
        if "=" not in item:
            raise cfg.ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
        key, text = item.split("=", 1)
        overrides[key.strip()] = _parse_value(text)
    return overrides


def _resolved(args: Any) -> cfg.RunConfig:
    return cfg.resolve(args.preset, Path(args.config) if args.config else None, _overrides(args))


def _given_config_flags(args: Any) -> list[str]:
    given = [f"--{flag.replace('_', '-')}" for flag in ("preset", "config", *SHORTCUTS)
             if getattr(args, flag, None) is not None]
    return given + (["--set"] if args.set else [])


def _default_out(config: cfg.RunConfig) -> Path:
    return Path("runs") / f"{config.model_name}-seed{config.seed}-fold{config.data.fold}"


def _train_config(args: Any) -> tuple[cfg.RunConfig | None, Path]:
    if args.resume:
        if args.out is None:
            raise cfg.ConfigError("--resume needs --out RUN_DIR (the run to continue)")
        given = _given_config_flags(args)
        if given:
            raise cfg.ConfigError(
                f"--resume continues {args.out} with its saved config.yaml; drop "
                f"{', '.join(given)}"
            )
        return None, Path(args.out)
    config = _resolved(args)
    return config, Path(args.out) if args.out else _default_out(config)


def metrics_table(metrics: dict[str, Any], title: str) -> Table:
    """A rich table of split × modality metrics."""
    table = Table(title=title)
    table.add_column("split")
    table.add_column("modality")
    names = sorted({k for per in metrics.values() for m in per.values() for k in m})
    for name in names:
        table.add_column(name, justify="right")
    for split, per in metrics.items():
        for modality, values in per.items():
            table.add_row(split, modality, *[f"{values[n]:.4f}" if n in values else "–"
                                             for n in names])
    return table


def cmd_train(args: Any, *, evaluate: bool) -> int:
    from mmssl import pipeline

    config, out = _train_config(args)
    if evaluate:
        metrics = pipeline.run(config, out, resume=args.resume)
        if not metrics:  # a data-parallel worker process
            return 0
        console.print(metrics_table(metrics, f"Linear probe — {out}"))
    else:
        checkpoint = pipeline.pretrain(config, out, resume=args.resume)
        console.print(f"pretrained: {checkpoint}", soft_wrap=True)
    console.print(f"run directory: {out}", soft_wrap=True)
    return 0


def cmd_evaluate(args: Any) -> int:
    from mmssl import pipeline

    metrics = pipeline.evaluate(Path(args.run_dir), device=args.device)
    console.print(metrics_table(metrics, f"Linear probe — {args.run_dir}"))
    console.print(f"metrics: {Path(args.run_dir) / 'metrics.json'}", soft_wrap=True)
    return 0


def cmd_sweep(args: Any) -> int:
    from mmssl.sweep import run_sweep

    base = _resolved(args)
    objectives = [o.strip() for o in (args.objectives or "").split(",") if o.strip()]
    if objectives == ["all"]:
        from mmssl.objectives.taxonomy import all_objectives

        objectives = all_objectives()
    methods = [m.strip() for m in (args.methods or "").split(",") if m.strip()]
    folds = _int_list(args.folds, "--folds", all_value=list(range(base.data.num_folds)))
    seeds = _int_list(args.seeds, "--seeds")
    from mmssl.sweep import Launcher

    launcher = Launcher(kind=args.launcher, jobs=args.jobs, slurm_partition=args.slurm_partition,
                        slurm_gpus=args.slurm_gpus, slurm_cpus=args.slurm_cpus,
                        slurm_minutes=args.slurm_minutes)
    result = run_sweep(base, objectives, Path(args.out), methods, folds=folds, seeds=seeds,
                       launcher=launcher)
    assert result.table_md and result.table_csv and result.figure
    table = Table(title=f"Sweep {args.out}: {result.table_md.read_text().splitlines()[0]}")
    header, _, *body = result.table_md.read_text().splitlines()[2:]
    for column in [c.strip() for c in header.strip("|").split("|")]:
        table.add_column(column, justify="left" if column == "model" else "right")
    for line in body:
        table.add_row(*[c.strip() for c in line.strip("|").split("|")])
    console.print(table)
    console.print(f"table: {result.table_md} and {result.table_csv}", soft_wrap=True)
    console.print(f"figure: {result.figure}", soft_wrap=True)
    if result.mode_figure:
        console.print(f"mode effects: {result.mode_figure}", soft_wrap=True)
    return 0


def cmd_generate(args: Any) -> int:
    from mmssl import pipeline

    path = pipeline.generate(Path(args.run_dir), n=args.n, split=args.split, device=args.device)
    console.print(f"generations: {path}", soft_wrap=True)
    return 0


def cmd_simulate(args: Any) -> int:
    from mmssl.data.simulate import SimulationSettings, simulate_cohort

    settings = SimulationSettings(
        subjects=args.subjects, seed=args.seed, sessions=args.sessions,
        patient_fraction=args.patient_fraction, unlabelled_fraction=args.unlabelled_fraction,
        voxel_size=args.voxel_size, t1_effect=args.t1_effect, falff_effect=args.falff_effect,
        noise=args.noise,
    )
    manifest = simulate_cohort(Path(args.out), settings)
    console.print(f"simulated cohort: {manifest}", soft_wrap=True)
    console.print(f"train on it: mmssl run --preset neuro-quick --manifest {manifest}",
                  soft_wrap=True)
    return 0


def cmd_saliency(args: Any) -> int:
    from mmssl.evaluation.brain import run_saliency

    dims = [int(d) for d in (args.latent_dims or "").split(",") if d.strip()]
    report = run_saliency(Path(args.run_dir), split=args.split, samples=args.samples,
                          noise=args.noise, latent_dims=dims, device=args.device)
    table = Table(title=f"Saliency — {args.run_dir} ({report['subjects']} {args.split} subjects)")
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
    from mmssl.evaluation.brain import run_links

    modalities = [m.strip() for m in args.modalities.split(",")] if args.modalities else None
    report = run_links(Path(args.run_dir), components=args.components,
                       permutations=args.permutations, modalities=modalities,
                       samples=args.samples, pca=args.pca or None, device=args.device)
    table = Table(title=f"Multimodal links — {args.run_dir}: CCA fitted on train, scored on test")
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


def cmd_claims(args: Any) -> int:
    from mmssl.evaluation.claims import check_claims, load_sweep, metric_of, write_claims

    root = Path(args.sweep_dir)
    records = load_sweep(root)
    verdicts = check_claims(records, permutations=args.permutations)
    metric = metric_of(records)
    colours = {"holds": "green", "mixed": "yellow", "does not hold": "red", "not tested": "dim"}
    table = Table(title=f"The paper's claims on {root} (test {metric}, paired over "
                  "folds × seeds)", show_lines=True)
    table.add_column("claim")
    table.add_column("verdict")
    table.add_column("evidence")
    for verdict in verdicts:
        table.add_row(verdict.claim, f"[{colours[verdict.status]}]{verdict.status}[/]",
                      verdict.summary)
    console.print(table)
    json_path, md_path = write_claims(root, verdicts, metric)
    console.print(f"claims: {md_path} and {json_path}", soft_wrap=True)
    return 0


def _int_list(text: str | None, flag: str, all_value: list[int] | None = None) -> list[int]:
    if not text:
        return []
    if text.strip() == "all" and all_value is not None:
        return all_value
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise cfg.ConfigError(f"{flag} {text!r}: expected comma-separated integers"
                              + (" or 'all'" if all_value is not None else "")) from None


def cmd_report(args: Any) -> int:
    from mmssl.evaluation.report import build_report

    html_path, md_path = build_report(Path(args.directory))
    console.print(f"report: {html_path} and {md_path}", soft_wrap=True)
    return 0


def cmd_list(args: Any) -> int:
    from mmssl.methods import METHODS
    from mmssl.objectives.taxonomy import all_objectives

    table = Table(title="mmssl")
    table.add_column("kind")
    table.add_column("names")
    table.add_row("objectives", ", ".join(all_objectives()))
    table.add_row("methods", ", ".join(sorted(METHODS)))
    table.add_row("datasets", ", ".join(cfg.DATASETS))
    table.add_row("presets", ", ".join(cfg.preset_names()))
    console.print(table)
    presets = Table(title="presets (mmssl run --preset NAME)")
    presets.add_column("name")
    presets.add_column("what it sets")
    for name in cfg.preset_names():
        presets.add_row(name, cfg.preset_description(name))
    console.print(presets)
    return 0


#: the subcommand parsers of the last :func:`build_parser` call, for error messages
SUBCOMMANDS: dict[str, ArgumentParser] = {}


def build_parser() -> ArgumentParser:
    """The full command-line parser."""
    parser = ArgumentParser(prog="mmssl", description="Multimodal self-supervised learning: "
                            "the Domino taxonomy (CR, XX, CC, RR) and its evaluation.",
                            exit_on_error=False)
    sub = parser.add_subcommands(dest="command")
    for name, help_text in (("run", "pretrain, then evaluate"), ("pretrain", "pretrain only")):
        command = ArgumentParser(description=help_text, exit_on_error=False)
        _config_flags(command)
        command.add_argument("--out", type=str | None, default=None, help="run directory")
        command.add_argument("--resume", action="store_true",
                             help="continue the run in --out from its last checkpoint")
        sub.add_subcommand(name, command, help=help_text)
        SUBCOMMANDS[name] = command
    evaluate = ArgumentParser(description="linear evaluation of a pretrained run",
                              exit_on_error=False)
    evaluate.add_argument("run_dir", type=str)
    evaluate.add_argument("--device", type=str | None, default=None)
    SUBCOMMANDS["evaluate"] = evaluate
    sub.add_subcommand("evaluate", evaluate, help="linear evaluation of a run directory")
    sweep = ArgumentParser(description="several objectives, one table and figure",
                           exit_on_error=False)
    sweep.add_argument("--objectives", type=str | None, default=None,
                       help="comma-separated taxonomy objectives, e.g. CR,XX,RR,CR-XX-CC-RR, "
                       "or all (the 15 combinations; CR is the unimodal model)")
    sweep.add_argument("--methods", type=str | None, default=None,
                       help="comma-separated baselines, e.g. supervised,ae,dccae,mmvae")
    sweep.add_argument("--folds", type=str | None, default=None,
                       help="folds to run, e.g. 0,1,2 or all (default: --fold)")
    sweep.add_argument("--seeds", type=str | None, default=None,
                       help="seeds to run, e.g. 1,2,3 (default: --seed)")
    sweep.add_argument("--launcher", type=str, default="sequential",
                       help="sequential (default), local (--jobs at a time) or slurm (submitit)")
    sweep.add_argument("--jobs", type=int, default=1, help="runs at a time (local, slurm)")
    sweep.add_argument("--slurm-partition", type=str | None, default=None)
    sweep.add_argument("--slurm-gpus", type=int, default=0, help="GPUs per run")
    sweep.add_argument("--slurm-cpus", type=int, default=4, help="CPUs per run")
    sweep.add_argument("--slurm-minutes", type=int, default=240, help="time limit per run")
    _config_flags(sweep, objective=False)
    sweep.add_argument("--out", type=str, required=True, help="sweep directory")
    SUBCOMMANDS["sweep"] = sweep
    sub.add_subcommand("sweep", sweep, help="run several objectives and compare them")
    generate = ArgumentParser(description="inputs and (cross-modal) generations as a PNG grid",
                              exit_on_error=False)
    generate.add_argument("run_dir", type=str)
    generate.add_argument("--n", type=int, default=10, help="examples per row")
    generate.add_argument("--split", type=str, default="test", help="train, val or test")
    generate.add_argument("--device", type=str | None, default=None)
    SUBCOMMANDS["generate"] = generate
    sub.add_subcommand("generate", generate, help="PNG grid of reconstructions/generations")
    simulate = ArgumentParser(description="write a synthetic T1 + fALFF cohort with ground truth",
                              exit_on_error=False)
    simulate.add_argument("--out", type=str, required=True, help="cohort directory")
    simulate.add_argument("--subjects", type=int, default=100)
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--sessions", type=int, default=1, help="sessions per subject")
    simulate.add_argument("--patient-fraction", type=float, default=0.5)
    simulate.add_argument("--unlabelled-fraction", type=float, default=0.0)
    simulate.add_argument("--voxel-size", type=float, default=3.0, help="mm (MNI grid)")
    simulate.add_argument("--t1-effect", type=float, default=0.6,
                          help="grey-matter loss at full severity in the T1 regions")
    simulate.add_argument("--falff-effect", type=float, default=0.3,
                          help="fALFF amplitude decrease at full severity in its regions")
    simulate.add_argument("--noise", type=float, default=0.05, help="smooth noise amplitude")
    SUBCOMMANDS["simulate"] = simulate
    sub.add_subcommand("simulate", simulate, help="synthetic multimodal brain cohort")
    saliency = ArgumentParser(description="SmoothGrad maps of the probe in brain space",
                              exit_on_error=False)
    saliency.add_argument("run_dir", type=str)
    saliency.add_argument("--split", type=str, default="test")
    saliency.add_argument("--samples", type=int, default=16, help="SmoothGrad noise samples")
    saliency.add_argument("--noise", type=float, default=0.1, help="noise σ / input range")
    saliency.add_argument("--latent-dims", type=str | None, default=None,
                          help="also map these latent units, e.g. 0,5")
    saliency.add_argument("--device", type=str | None, default=None)
    SUBCOMMANDS["saliency"] = saliency
    sub.add_subcommand("saliency", saliency, help="brain maps of what drives the probe")
    links = ArgumentParser(description="CCA links between two modalities' representations "
                           "(mapped to the brain for neuroimaging runs)",
                           exit_on_error=False)
    links.add_argument("run_dir", type=str)
    links.add_argument("--components", type=int, default=3)
    links.add_argument("--permutations", type=int, default=200)
    links.add_argument("--modalities", type=str | None, default=None, help="two, e.g. t1,falff")
    links.add_argument("--samples", type=int, default=16)
    links.add_argument("--pca", type=int, default=10,
                       help="reduce each representation to this many PCA components first "
                       "(fitted on train; 0 = off)")
    links.add_argument("--device", type=str | None, default=None)
    SUBCOMMANDS["links"] = links
    sub.add_subcommand("links", links, help="multimodal links through a shared subspace")
    report = ArgumentParser(description="HTML and Markdown report of a run or a sweep",
                            exit_on_error=False)
    report.add_argument("directory", type=str, help="a run directory or a sweep directory")
    SUBCOMMANDS["report"] = report
    claims = ArgumentParser(description="check the paper's five claims on a finished sweep",
                            exit_on_error=False)
    claims.add_argument("sweep_dir", type=str)
    claims.add_argument("--permutations", type=int, default=100,
                        help="permutations of the held-out link p-values")
    SUBCOMMANDS["claims"] = claims
    sub.add_subcommand("claims", claims, help="the paper's claims, checked on a sweep")
    sub.add_subcommand("report", report, help="self-contained HTML (and Markdown) report")
    sub.add_subcommand("list", ArgumentParser(exit_on_error=False),
                       help="objectives, methods, datasets and presets")
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mmssl`` console script."""
    from mmssl.objectives.taxonomy import ObjectiveError

    _configure_logging()
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except Exception as error:  # jsonargparse's ArgumentError
        command = next((a for a in argv if not a.startswith("-")), "")
        message = " ".join(str(error).split())
        subcommand = SUBCOMMANDS.get(command)
        if subcommand is not None and "nrecognized argument" in message:
            flags = sorted({o for a in subcommand._actions for o in a.option_strings
                            if o.startswith("--") and o != "--help"})
            message += f"; valid flags of `mmssl {command}`: {', '.join(flags)}"
        console.print(f"[red]mmssl: error:[/red] {message}; see `mmssl {command} --help`",
                      highlight=False, soft_wrap=True)
        return 2
    command = args.command
    sub_args = args.get(command) if command else None
    try:
        if command in ("run", "pretrain"):
            return cmd_train(sub_args, evaluate=command == "run")
        if command == "evaluate":
            return cmd_evaluate(sub_args)
        if command == "sweep":
            return cmd_sweep(sub_args)
        if command == "generate":
            return cmd_generate(sub_args)
        if command == "simulate":
            return cmd_simulate(sub_args)
        if command == "saliency":
            return cmd_saliency(sub_args)
        if command == "links":
            return cmd_links(sub_args)
        if command == "report":
            return cmd_report(sub_args)
        if command == "claims":
            return cmd_claims(sub_args)
        if command == "list":
            return cmd_list(sub_args)
    except (cfg.ConfigError, ObjectiveError, FileNotFoundError, ValueError, RuntimeError) as err:
        console.print(f"[red]mmssl: error:[/red] {err}", highlight=False, soft_wrap=True)
        return 2
    parser.print_help()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
