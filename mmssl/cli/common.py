"""What the subcommands share: the console, the configuration flags and their parsing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser
from rich.console import Console

from mmssl import config as cfg
from mmssl.errors import ConfigError
from mmssl.settings import load_yaml_text

console = Console()


def config_flags(parser: ArgumentParser, *, objective: bool = True) -> None:
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


def parse_value(text: str) -> Any:
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


def overrides(args: Any) -> dict[str, Any]:
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
        overrides[key.strip()] = parse_value(text)
    return overrides


def config_file(args: Any) -> Path | None:
    if not args.config:
        return None
    path = Path(args.config).expanduser()
    if not path.is_file():
        raise ConfigError(f"--config {args.config}: no such file")
    return path


def resolved(args: Any) -> cfg.RunConfig:
    return cfg.resolve(args.preset or [], config_file(args), overrides(args))


def given_config_flags(args: Any) -> list[str]:
    given = [f"--{flag.replace('_', '-')}" for flag in ("preset", "config", *cfg.SHORTCUTS)
             if getattr(args, flag, None) is not None]
    return given + (["--set"] if args.set else [])


def print_table(table: Any) -> None:
    console.print(table.to_rich())


# -------------------------------------------------------------------------------- handlers


def int_list(text: str | None, flag: str) -> tuple[int, ...] | str:
    if not text:
        return ()
    if text.strip() == "all":
        return "all"
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{flag} {text!r}: expected comma-separated integers or 'all'") \
            from None


def names(text: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (text or "").split(",") if v.strip())


