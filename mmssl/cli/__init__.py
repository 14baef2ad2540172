"""The ``mmssl`` command: a table of subcommands, each a parser and a handler; no logic.

    mmssl run      [--preset P ...] [--config FILE] [--objective NAME] [--out DIR] ...
    mmssl pretrain [same flags]          mmssl evaluate RUN_DIR
    mmssl sweep    --objectives CR,XX,RR [--methods ae,dccae] [--folds all --seeds 1,2,3] --out DIR
    mmssl claims   SWEEP_DIR | --scores FILE...    mmssl report DIR
    mmssl simulate --out DIR    mmssl manifest BIDS_DIR    mmssl falff BIDS_DIR|BOLD
    mmssl saliency RUN_DIR      mmssl regions RUN_DIR      mmssl links RUN_DIR
    mmssl audit RUN_DIR
    mmssl generate RUN_DIR
    mmssl list

Every problem a user can cause ends with one line naming the input and exit status 2 (1 for a
diverging run, 130 for Ctrl-C); see :mod:`mmssl.errors`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from jsonargparse import ArgumentParser

from mmssl.cli import brain, training
from mmssl.cli.common import console
from mmssl.errors import MmsslError
from mmssl.plugins import load_plugins

__all__ = ["COMMANDS", "Command", "build_parser", "main"]


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
    Command("run", "pretrain, then evaluate", training.train_parser,
            lambda a: training.cmd_train(a, evaluate=True), "mmssl run --resume --out {out}"),
    Command("pretrain", "pretrain only", training.train_parser,
            lambda a: training.cmd_train(a, evaluate=False),
            "mmssl pretrain --resume --out {out}"),
    Command("evaluate", "linear evaluation of a run directory", training.evaluate_parser,
            training.cmd_evaluate),
    Command("sweep", "several models × folds × seeds, one table and figure",
            training.sweep_parser, training.cmd_sweep,
            "the same `mmssl sweep` command (finished runs are skipped)"),
    Command("claims", "the paper's claims, tested on a sweep", training.claims_parser,
            training.cmd_claims),
    Command("report", "self-contained HTML (and Markdown) report", training.report_parser,
            training.cmd_report),
    Command("generate", "PNG grid of reconstructions/generations", training.generate_parser,
            training.cmd_generate),
    Command("simulate", "synthetic multimodal brain cohort", brain.simulate_parser,
            brain.cmd_simulate),
    Command("manifest", "a manifest from a BIDS dataset (T1w + fALFF derivatives)",
            brain.manifest_parser, brain.cmd_manifest),
    Command("falff", "fALFF maps from preprocessed resting-state series", brain.falff_parser,
            brain.cmd_falff),
    Command("saliency", "per-subject and group maps of what drives the representation",
            brain.saliency_parser, brain.cmd_saliency),
    Command("regions", "brain regions separating patients from controls (group inference)",
            brain.regions_parser, brain.cmd_regions),
    Command("links", "multimodal links through a shared subspace", brain.links_parser,
            brain.cmd_links),
    Command("audit", "what a brain run's representation encodes (diagnosis, covariates, "
            "site) and whether its objective took a shortcut or memorised",
            brain.audit_parser, brain.cmd_audit),
    Command("list", "objectives, methods, datasets and presets", _no_arguments,
            brain.cmd_list),
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
