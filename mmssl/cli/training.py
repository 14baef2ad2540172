"""``mmssl run``, ``pretrain``, ``evaluate``, ``sweep``, ``claims``, ``report``, ``generate``.

Handlers import the library when they run, so ``mmssl --help`` and argument errors answer at
once, without loading torch and Lightning."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser

from mmssl.cli.common import (
    config_file,
    config_flags,
    console,
    given_config_flags,
    int_list,
    names,
    overrides,
    print_table,
    resolved,
)
from mmssl.errors import ConfigError


def cmd_train(args: Any, *, evaluate: bool) -> int:
    from mmssl.analysis.tables import metrics_table
    from mmssl.runs.evaluation import train_and_evaluate
    from mmssl.runs.training import pretrain

    command = "run" if evaluate else "pretrain"
    if args.resume:
        if args.out is None:
            raise ConfigError("--resume needs --out RUN_DIR (the run to continue)")
        given = given_config_flags(args)
        if given:
            raise ConfigError(f"--resume continues {args.out} with its saved config.yaml; drop "
                              f"{', '.join(given)}")
        config, out = None, Path(args.out)
    else:
        config = resolved(args)
        out = Path(args.out) if args.out else (
            Path("runs") / f"{config.model_name}-seed{config.seed}-fold{config.data.fold}")
    if evaluate:
        metrics = train_and_evaluate(config, out, resume=args.resume, command=command)
        if not metrics:  # a data-parallel worker process
            return 0
        print_table(metrics_table(metrics, f"Linear probe — {out}"))
    else:
        checkpoint = pretrain(config, out, resume=args.resume, command=command)
        console.print(f"pretrained: {checkpoint}", soft_wrap=True)
    console.print(f"run directory: {out}", soft_wrap=True)
    return 0


def cmd_evaluate(args: Any) -> int:
    from mmssl.analysis.tables import metrics_table
    from mmssl.runs.evaluation import evaluate

    metrics = evaluate(Path(args.run_dir), device=args.device)
    print_table(metrics_table(metrics, f"Linear probe — {args.run_dir}"))
    console.print(f"metrics: {Path(args.run_dir) / 'metrics.json'}", soft_wrap=True)
    return 0


def cmd_sweep(args: Any) -> int:
    from mmssl.analysis.sweeps import write_sweep_results
    from mmssl.runs.launch import Launcher
    from mmssl.runs.sweep import SweepRequest, plan_sweep, run_sweep

    listed_folds = int_list(args.folds, "--folds")
    folds = (tuple(range(resolved(args).data.num_folds)) if isinstance(listed_folds, str)
             else listed_folds)
    listed_seeds = int_list(args.seeds, "--seeds")
    if isinstance(listed_seeds, str):
        raise ConfigError("--seeds: list the seeds, e.g. --seeds 1,2,3")
    seeds = listed_seeds
    if any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds {args.seeds}: seeds must be ≥ 0")
    request = SweepRequest(presets=tuple(args.preset or ()), config_file=config_file(args),
                           overrides=overrides(args), objectives=names(args.objectives),
                           methods=names(args.methods), folds=tuple(folds),
                           seeds=tuple(seeds), method_presets=not args.no_method_presets)
    launcher = Launcher(kind=args.launcher, jobs=args.jobs, slurm_partition=args.slurm_partition,
                        slurm_gpus=args.slurm_gpus, slurm_cpus=args.slurm_cpus,
                        slurm_minutes=args.slurm_minutes)
    sweep = run_sweep(plan_sweep(request), Path(args.out), launcher)
    results = write_sweep_results(sweep)
    print_table(results.table)
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
        claims_figure,
        claims_from_files,
        claims_markdown,
        claims_table,
        write_claims,
    )
    from mmssl.analysis.comparisons import comparisons_table, parse_pairs
    from mmssl.runs.rundir import SweepDir

    if args.refresh or args.check:
        from mmssl.analysis.reproduction import refresh_document

        document = Path(args.refresh or args.check)
        changed = refresh_document(document, check=bool(args.check))
        if args.check and changed:
            console.print(f"{document}: generated blocks differ from their results files: "
                          + "; ".join(changed) + f" (run `mmssl claims --refresh {document}`)",
                          soft_wrap=True)
            return 1
        said = ("up to date" if not changed else
                ("refreshed: " + "; ".join(changed)))
        console.print(f"{document}: {said}", soft_wrap=True)
        return 0
    if (args.models or args.seeds) and not args.scores:
        raise ConfigError("--models and --seeds select from committed files: give --scores FILE")
    pairs = parse_pairs(args.compare)
    if args.scores:
        seeds = int_list(args.seeds, "--seeds")
        if isinstance(seeds, str):
            raise ConfigError("--seeds selects seeds from the files, e.g. 1 or 1,2; leave it out "
                              "for every seed")
        report = claims_from_files([Path(p) for p in args.scores],
                                   [Path(p) for p in args.links or []], alpha=args.alpha,
                                   models=names(args.models), seeds=seeds, compare=pairs)
        title = "The paper's claims on " + ", ".join(Path(p).name for p in args.scores)
    else:
        if not args.sweep_dir:
            raise ConfigError("give a sweep directory, or --scores FILE [--links FILE]")
        sweep = SweepDir(Path(args.sweep_dir))
        report = check_sweep(sweep, permutations=args.permutations, alpha=args.alpha,
                             all_runs=args.all_runs, compare=pairs)
        json_path, md_path = write_claims(sweep, report)
        title = f"The paper's claims on {args.sweep_dir}"
        console.print(f"claims: {md_path} and {json_path}", soft_wrap=True)
    print_table(claims_table(report, title))
    if report.comparisons:
        print_table(comparisons_table(report.comparisons, report.alpha, report.metric))
    if args.markdown:
        io.write_text(Path(args.markdown), claims_markdown(report, title))
        console.print(f"markdown: {args.markdown}", soft_wrap=True)
    if args.figure:
        figure = claims_figure(report, Path(args.figure), title)
        console.print(f"figure: {figure}" if figure else
                      "figure: nothing was tested, no figure written", soft_wrap=True)
    return 0


def cmd_generate(args: Any) -> int:
    from mmssl.runs.evaluation import generate

    path = generate(Path(args.run_dir), n=args.n, split=args.split, device=args.device)
    console.print(f"generations: {path}", soft_wrap=True)
    return 0


def cmd_report(args: Any) -> int:
    from mmssl.analysis.report import build_report

    html_path, md_path = build_report(Path(args.directory))
    console.print(f"report: {html_path} and {md_path}", soft_wrap=True)
    return 0


def train_parser(parser: ArgumentParser) -> None:
    config_flags(parser)
    parser.add_argument("--out", type=str | None, default=None, help="run directory")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its last checkpoint")


def evaluate_parser(parser: ArgumentParser) -> None:
    parser.add_argument("run_dir", type=str)
    parser.add_argument("--device", type=str | None, default=None)


def sweep_parser(parser: ArgumentParser) -> None:
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
    config_flags(parser, objective=False)
    parser.add_argument("--out", type=str, required=True, help="sweep directory")


def claims_parser(parser: ArgumentParser) -> None:
    parser.add_argument("sweep_dir", type=str | None, default=None, nargs="?")
    parser.add_argument("--scores", type=str, action="append", default=None,
                        help="decide from committed scores files instead (repeatable)")
    parser.add_argument("--links", type=str, action="append", default=None,
                        help="with --scores: committed links files (repeatable)")
    parser.add_argument("--markdown", type=str | None, default=None,
                        help="also write the verdicts as Markdown to this file")
    parser.add_argument("--models", type=str | None, default=None,
                        help="with --scores: decide from these models only (comma-separated)")
    parser.add_argument("--seeds", type=str | None, default=None,
                        help="with --scores: decide from these seeds' runs only, e.g. 1")
    parser.add_argument("--compare", type=str, action="append", default=None,
                        help="also compare two models, paired over runs, two-sided: A:B for "
                             "A − B, e.g. dccae:ae (repeatable, or comma-separated)")
    parser.add_argument("--figure", type=str | None, default=None,
                        help="also draw the evidence (every comparison and its interval) to this "
                             "PNG (a sweep folder gets claims.png anyway)")
    parser.add_argument("--alpha", type=float, default=0.05, help="level of every claim")
    parser.add_argument("--permutations", type=int, default=100,
                        help="permutations of the held-out link p-values")
    parser.add_argument("--all-runs", action="store_true",
                        help="a sweep folder: every evaluated run its plan lists, not only those "
                             "the last `mmssl sweep` command requested")
    parser.add_argument("--refresh", type=str | None, default=None,
                        help="recompute the generated blocks of this Markdown file "
                             "(e.g. REPRODUCTION.md) from the results files they name")
    parser.add_argument("--check", type=str | None, default=None,
                        help="exit 1 if a generated block of this Markdown file differs from "
                             "what its results files give")


def generate_parser(parser: ArgumentParser) -> None:
    parser.add_argument("run_dir", type=str)
    parser.add_argument("--n", type=int, default=10, help="examples per row")
    parser.add_argument("--split", type=str, default="test", help="train, val or test")
    parser.add_argument("--device", type=str | None, default=None)


def report_parser(parser: ArgumentParser) -> None:
    parser.add_argument("directory", type=str, help="a run directory or a sweep directory")


