"""Typed run configuration: composable presets, files and flags, validated before anything runs.

One :class:`RunConfig` describes a whole run. Its parts come from their owners: the data
section from the dataset registry (common :class:`~mmssl.data.registry.DataSettings` plus the
selected dataset's own section ``data.<dataset>``), ``model`` and ``optim`` from
:mod:`mmssl.methods.base`, the method sections (``objective``, ``cca``, ``ae``, ``mmvae``,
``supervised``…) from the method registry, and ``trainer`` and ``probe`` from here. A new
method or dataset brings its own settings; nothing here changes.

A configuration is built (:func:`resolve`) from, in increasing priority: the defaults, one or
more packaged presets in order (``--preset two_view_mnist --preset dccae``: dataset first,
method second), a user YAML file, and command-line flags / ``--set KEY=VALUE``. Paths in a YAML
file are relative to that file's folder, paths in flags to the working directory; both are
stored absolute, so a run directory works from anywhere. Every value is checked against its
type and range (:mod:`mmssl.settings`), then the parts against each other (:func:`validate`);
errors name the key (and its flag) and what was expected.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import yaml

from mmssl import io
from mmssl.data import DATASETS, DataSettings, dataset_spec
from mmssl.errors import ConfigError
from mmssl.methods import (
    METHODS,
    ModelSettings,
    OptimSettings,
    method_class,
    method_sections,
)
from mmssl.objectives.taxonomy import Objective
from mmssl.plugins import load_plugins
from mmssl.settings import SettingError, from_mapping, load_yaml_text, require, to_dict

__all__ = [
    "SHORTCUTS",
    "ConfigError",
    "ProbeSettings",
    "RunConfig",
    "TrainerSettings",
    "from_dict",
    "load",
    "preset",
    "preset_description",
    "preset_names",
    "resolve",
    "save",
    "validate",
]

T = TypeVar("T")

#: Command-line shortcut flag → the dotted key it sets.
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
    "manifest": "data.neuro.manifest",
    "on_bad_row": "data.neuro.on_bad_row",
    "cache_dir": "data.neuro.cache_dir",
    "strict_grid": "data.neuro.strict_grid",
}
#: Keys of the flat data layout of mmssl ≤ 0.1 → their dataset section.
_LEGACY_DATA_KEYS: dict[str, str] = {
    "pairing": "two_view_mnist",
    "max_per_class": "mnist_svhn", "pairings": "mnist_svhn", "eval_pairings": "mnist_svhn",
    "manifest": "neuro", "on_bad_row": "neuro", "cache_dir": "neuro", "val_fraction": "neuro",
    "label_mapping": "neuro", "preprocessing": "neuro", "augmentation": "neuro",
    "strict_grid": "neuro",
}
#: Values of path settings that are keywords, not paths.
_PATH_KEYWORDS = frozenset({"mni152", "none"})
_CORE = ("method", "seed", "data", "model", "optim", "trainer", "probe")
_PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true")


@dataclass
class TrainerSettings:
    """Lightning trainer settings; nothing here names a device unless the user does.

    ``checkpoint`` chooses what evaluation uses: ``last`` (the end of training) or ``best``
    (lowest validation loss, the authors' choice). ``devices`` > 1 or ``num_nodes`` > 1 train
    data-parallel (DDP); contrastive negatives are then gathered from every process.

    Speed (:mod:`mmssl.runs.performance`): ``memory_format`` lays out the model and its inputs
    ``contiguous`` (NCHW/NCDHW), ``channels_last`` (NHWC/NDHWC: ``torch.channels_last`` for
    2-D, ``torch.channels_last_3d`` for 3-D) or ``auto`` — a few timed training steps of both
    at the run's batch shape on its device pick the faster, cached per machine so the runs of
    a sweep agree; the choice is recorded in ``pretrain.json`` and a resumed run keeps it.
    ``compile: true`` compiles the encoders and heads in place (``nn.Module.compile``; the
    checkpoints stay loadable without it) and records the compile time. ``cpu_allocator:
    retain`` (default) lets the training process keep freed CPU memory instead of faulting it
    in again every step (glibc ``mallopt``; :mod:`mmssl.runs.allocator`), ``system`` leaves
    the C library's defaults; results are identical either way.
    """

    epochs: int = 50
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int = 1
    precision: str = "32-true"
    limit_train_batches: float | None = None
    log_every_n_steps: int = 10
    progress_bar: bool = True
    checkpoint: Literal["best", "last"] = "last"
    num_nodes: int = 1
    strategy: str = "auto"
    sync_batchnorm: bool = False
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"
    compile: bool = False
    cpu_allocator: Literal["retain", "system"] = "retain"

    def validate(self) -> None:
        require(self.epochs >= 1, "epochs", f"must be ≥ 1; got {self.epochs}")
        require(self.devices >= 1, "devices", f"must be ≥ 1; got {self.devices}")
        require(self.num_nodes >= 1, "num_nodes", f"must be ≥ 1; got {self.num_nodes}")
        require(self.log_every_n_steps >= 1, "log_every_n_steps",
                f"must be ≥ 1; got {self.log_every_n_steps}")
        require(self.precision in _PRECISIONS, "precision",
                f"expected one of {', '.join(_PRECISIONS)}; got {self.precision!r}")
        limit = self.limit_train_batches
        require(limit is None or (0 < limit <= 1) or (limit > 1 and float(limit).is_integer()),
                "limit_train_batches", "must be a fraction in (0, 1] of the batches or a whole "
                f"number of batches ≥ 1 (null: all); got {limit}")


@dataclass
class ProbeSettings:
    """Linear probe: logistic regression, inverse regularisation C chosen on validation.

    ``class_weight: balanced`` reweights classes inversely to their frequency (unequal cohorts).
    """

    Cs: list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0])
    max_iter: int = 2000
    class_weight: Literal["balanced"] | None = None

    def validate(self) -> None:
        require(bool(self.Cs) and all(c > 0 for c in self.Cs), "Cs",
                f"needs positive values; got {self.Cs}")
        require(self.max_iter >= 1, "max_iter", f"must be ≥ 1; got {self.max_iter}")


def _default_sections() -> dict[str, Any]:
    return {name: settings() for name, settings in method_sections().items()}


def _default_data() -> DataSettings:
    return DataSettings(sections={name: spec.settings() for name, spec in DATASETS.items()})


@dataclass
class RunConfig:
    """Everything that defines one run; saved resolved as ``config.yaml`` in the run directory.

    The method sections are reached as attributes (``config.objective``, ``config.cca``…) or,
    typed, with :meth:`section`.
    """

    method: str = "taxonomy"
    seed: int = 343
    data: DataSettings = field(default_factory=_default_data)
    model: ModelSettings = field(default_factory=ModelSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    trainer: TrainerSettings = field(default_factory=TrainerSettings)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    sections: dict[str, Any] = field(default_factory=_default_sections)

    def __getattr__(self, name: str) -> Any:
        sections = self.__dict__.get("sections")
        if sections is not None and name in sections:
            return sections[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or section {name!r}")

    def section(self, name: str, cls: type[T] | None = None) -> T:
        """The method section ``name`` (checked to be a ``cls`` when given)."""
        if name not in self.sections:
            raise KeyError(f"no configuration section {name!r}; sections: "
                           f"{', '.join(self.sections)}")
        value = self.sections[name]
        if cls is not None and not isinstance(value, cls):
            raise TypeError(f"section {name!r} is a {type(value).__name__}, not {cls.__name__}")
        return cast(T, value)

    @property
    def modalities(self) -> list[str]:
        """The modalities in use (the dataset's own when not set; filled in by validation)."""
        return list(self.data.modalities or dataset_spec(self.data.dataset).modalities)

    @property
    def model_name(self) -> str:
        """The name a table shows: the objective for taxonomy models, else the method."""
        return method_class(self.method).model_name(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested values: the core parts, the selected dataset's section, and the
        sections the method reads (YAML- and JSON-serialisable)."""
        data = to_dict(self.data)
        data[self.data.dataset] = to_dict(self.data.settings)
        values: dict[str, Any] = {"method": self.method, "seed": self.seed, "data": data,
                                  "model": to_dict(self.model), "optim": to_dict(self.optim),
                                  "trainer": to_dict(self.trainer), "probe": to_dict(self.probe)}
        for name in method_class(self.method).sections:
            values[name] = to_dict(self.sections[name])
        return values


# ------------------------------------------------------------------------------ building


def _flag_of(key: str) -> str:
    flags = [f"--{flag.replace('_', '-')}" for flag, dotted in SHORTCUTS.items() if dotted == key]
    return f" ({flags[0]})" if flags else ""


def _error(error: SettingError, source: str) -> ConfigError:
    return ConfigError(f"{error.key}: {error.message}{_flag_of(error.key)} (in {source})"
                       if error.key else f"{error.message} (in {source})")


def migrate(values: Mapping[str, Any]) -> dict[str, Any]:
    """Move keys of the flat data layout of mmssl ≤ 0.1 into their dataset sections.

    ``data.pairing`` → ``data.two_view_mnist.pairing``, ``data.manifest`` →
    ``data.neuro.manifest`` …; saved configurations and ``--set`` keys of older versions keep
    working.
    """
    migrated = copy.deepcopy(dict(values))
    data = migrated.get("data")
    if isinstance(data, Mapping):
        data = dict(data)
        for key, dataset in _LEGACY_DATA_KEYS.items():
            if key in data:
                section = dict(data.get(dataset) or {})
                section.setdefault(key, data.pop(key))
                data[dataset] = section
        migrated["data"] = data
    return migrated


def absolutize(values: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """Make the path settings in ``values`` absolute, relative to ``base`` (``~`` expanded)."""
    out = copy.deepcopy(dict(values))
    data = out.get("data")
    if not isinstance(data, dict):
        return out

    def fix(value: Any) -> Any:
        if not isinstance(value, str) or not value.strip() or value in _PATH_KEYWORDS:
            return value
        path = Path(value).expanduser()
        return str(path if path.is_absolute() else Path(os.path.abspath(base / path)))

    if "data_dir" in data:
        data["data_dir"] = fix(data["data_dir"])
    for name, spec in DATASETS.items():
        section = data.get(name)
        if not isinstance(section, dict):
            continue
        for dotted in (*spec.path_fields, "preprocessing.mask"):
            *parents, last = dotted.split(".")
            node: Any = section
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and last in node:
                node[last] = fix(node[last])
    return out


def from_dict(values: Mapping[str, Any], source: str = "configuration") -> RunConfig:
    """Build and validate a :class:`RunConfig` from a nested mapping.

    Raises:
        ConfigError: naming the key (and its flag), the value and what was expected.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source} must be a mapping of keys to values; got "
                          f"{type(values).__name__}")
    load_plugins()  # methods and datasets from outside mmssl (once)
    values = migrate(values)
    sections = method_sections()
    valid = [*_CORE, *sections]
    try:
        for key in values:
            if key not in valid:
                raise SettingError("", f"unknown key {key!r}; valid keys here: "
                                       f"{', '.join(valid)}")
        method = values.get("method", "taxonomy")
        if not isinstance(method, str) or method not in METHODS:
            raise SettingError("method", f"unknown method {method!r}; valid: "
                                         f"{', '.join(sorted(METHODS))}")
        seed = from_mapping(_Seed, {"seed": values.get("seed", 343)}).seed
        config = RunConfig(
            method=method, seed=seed, data=_data(values.get("data", {})),
            model=from_mapping(ModelSettings, _section(values, "model"), "model"),
            optim=from_mapping(OptimSettings, _section(values, "optim"), "optim"),
            trainer=from_mapping(TrainerSettings, _section(values, "trainer"), "trainer"),
            probe=from_mapping(ProbeSettings, _section(values, "probe"), "probe"),
            sections={name: from_mapping(cls, _section(values, name), name)
                      for name, cls in sections.items()},
        )
    except SettingError as error:
        raise _error(error, source) from None
    validate(config, source)
    return config


@dataclass
class _Seed:
    seed: int = 343

    def validate(self) -> None:
        require(self.seed >= 0, "seed", f"must be ≥ 0; got {self.seed}")


def _section(values: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = values.get(name, {})
    return {} if value is None else value


def _data(values: Any) -> DataSettings:
    if not isinstance(values, Mapping):
        return from_mapping(DataSettings, values, "data")  # raises: not a section
    common = {k: v for k, v in values.items() if k not in DATASETS}
    settings = from_mapping(DataSettings, common, "data")
    settings.sections = {name: from_mapping(spec.settings, _section(values, name), f"data.{name}")
                         for name, spec in DATASETS.items()}
    return settings


def validate(config: RunConfig, source: str = "configuration") -> None:
    """Checks across sections: modalities, the method against them, names used in paths."""

    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{key}: {message}{_flag_of(key)} (in {source})")

    data = config.data
    spec = dataset_spec(data.dataset)
    if data.modalities is None:
        if spec.names_modalities:
            fail("data.modalities", f"the {spec.name} dataset needs its modalities named, e.g. "
                                    "--modalities t1,falff (the manifest's path columns)")
        data.modalities = list(spec.modalities)
    if not data.modalities:
        fail("data.modalities", "needs at least one modality")
    if len(set(data.modalities)) != len(data.modalities):
        fail("data.modalities", f"repeated modality in {data.modalities}")
    for modality in data.modalities:
        try:
            io.check_name(modality, "modality")
        except ValueError as error:
            fail("data.modalities", str(error))
    unknown = [m for m in data.modalities if spec.modalities and m not in spec.modalities]
    if unknown:
        fail("data.modalities", f"{unknown} not provided by {data.dataset}; valid: "
                                f"{', '.join(spec.modalities)}")
    cls = method_class(config.method)
    problem = cls.check_config(config)
    if problem:
        fail(config.method, problem)
    if config.model.encoder == "pca" and cls.needs_local_features(config):
        fail("model.encoder", f"pca has no local features, and {config.model_name} needs them "
                              f"(its CR, XX or CC terms); use objective RR with it, or the "
                              f"dcgan encoder")
    if config.model.global_head != "mlp" and (config.method != "taxonomy"
                                               or cls.needs_local_features(config)):
        fail("model.global_head", f"{config.model.global_head} (R = z) is read by the taxonomy's "
                                  f"global terms only (RR); {config.model_name} needs mlp")
    if cls.traits.relates_modalities and len(data.modalities) < 2:
        fail("method", f"{config.method} relates modalities and needs two or more; "
                       f"data.modalities is {data.modalities}")
    if "objective" in cls.sections and config.method == "taxonomy":
        objective = Objective.parse(config.section("objective").name)
        if objective.is_cross_modal and len(data.modalities) < 2:
            fail("objective.name", f"{objective.name} has cross-modal mode(s) "
                                   f"{list(objective.cross_modal_modes)}, which need two or more "
                                   f"modalities; data.modalities is {data.modalities}. Use CR "
                                   "for one.")


def preset_names() -> list[str]:
    """Names of the packaged presets."""
    folder = resources.files("mmssl") / "presets"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir()
                  if p.name.endswith(".yaml"))


def preset_description(name: str) -> str:
    """The leading comment of a packaged preset, as one line."""
    text = (resources.files("mmssl") / "presets" / f"{name}.yaml").read_text()
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").strip())
    return " ".join(lines)


def preset_chain(name: str) -> list[str]:
    """The packaged presets a name stands for: itself, or ``<method>-<dataset>`` (the names of
    mmssl ≤ 0.1) as the dataset preset then the method preset."""
    names = preset_names()
    if name in names:
        return [name]
    method, _, dataset = name.partition("-")
    if dataset in names and method in names:
        return [dataset, method]
    raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(names)} (and "
                      "<method>-<dataset> for the two in a row)")


def preset(name: str) -> dict[str, Any]:
    """The raw values of a packaged preset (a ``<method>-<dataset>`` name merges the two)."""
    values: dict[str, Any] = {}
    for part in preset_chain(name):
        text = (resources.files("mmssl") / "presets" / f"{part}.yaml").read_text()
        values = merge(values, migrate(load_yaml_text(text) or {}))
    return values


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    try:
        values = load_yaml_text(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping; got {type(values).__name__}")
    return values


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``override`` wins, nested mappings merge key by key."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``values["a"]["b"] = value`` for ``dotted = "a.b"``."""
    *parents, last = dotted.split(".")
    node = values
    walked = []
    for part in parents:
        walked.append(part)
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted!r}: {'.'.join(walked)} is a value, not a "
                              "section")
        node = child
    node[last] = value


def resolve(
    presets: Sequence[str] | str | None = None,
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    cwd: Path | None = None,
) -> RunConfig:
    """Defaults ← presets (in order) ← config file ← overrides (dotted keys), validated.

    Relative paths of the config file are taken from its folder, those of ``overrides`` from
    ``cwd`` (the working directory by default); all are stored absolute.
    """
    values: dict[str, Any] = {}
    sources = []
    chain = [presets] if isinstance(presets, str) else list(presets or [])
    for name in chain:
        values = merge(values, preset(name))
        sources.append(f"preset {name!r}")
    if config_file:
        config_file = Path(config_file).expanduser()
        values = merge(values, absolutize(migrate(load_yaml(config_file)),
                                          config_file.resolve().parent))
        sources.append(str(config_file))
    if overrides:
        nested: dict[str, Any] = {}
        for dotted, value in overrides.items():
            set_dotted(nested, dotted, value)
        values = merge(values, absolutize(migrate(nested), cwd or Path.cwd()))
        sources.append("command-line flags")
    return from_dict(values, " + ".join(sources) or "defaults")


def save(config: RunConfig, path: Path) -> None:
    """Save the resolved configuration as YAML, atomically."""
    io.write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def load(path: Path) -> RunConfig:
    """Load and validate a saved ``config.yaml`` (the layout of older versions included)."""
    return from_dict(load_yaml(path), str(path))
