"""Typed run configuration, YAML presets and their validation.

One :class:`RunConfig` describes a whole run (data, model, objective, optimiser, trainer,
probe). It is built from, in increasing priority: the dataclass defaults, a packaged preset
(``mmssl/presets/NAME.yaml``), a user YAML file, and command-line overrides. Validation is done
by jsonargparse against the dataclass types, plus the checks that types cannot express; every
error names the offending key and what was expected.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from jsonargparse import ArgumentParser

from mmssl.objectives.infonce import CRITICS
from mmssl.objectives.taxonomy import Objective, ObjectiveError, resolve_weights

DATASETS: tuple[str, ...] = ("two_view_mnist", "mnist_svhn", "neuro")


class ConfigError(ValueError):
    """A configuration that cannot describe a run; the message names the key."""


@dataclass
class PreprocessingConfig:
    """Neuroimaging: target grid (MNI, isotropic), brain mask and intensity normalisation."""

    voxel_size: float = 3.0
    shape: list[int] = field(default_factory=lambda: [64, 64, 64])
    #: ``mni152`` (nilearn's bundled brain mask), ``none``, or a path to a NIfTI mask.
    mask: str = "mni152"
    normalization: Literal["zscore", "minmax", "none"] = "zscore"


@dataclass
class AugmentationConfig:
    """Neuroimaging training augmentation shared by the modalities (fusion-spec §4.4)."""

    pad: int = 8
    flip: bool = False


@dataclass
class DataConfig:
    """Which data, which modalities, which fold, how it is batched."""

    dataset: Literal["two_view_mnist", "mnist_svhn", "neuro"] = "two_view_mnist"
    data_dir: str | None = None
    modalities: list[str] | None = None  # None: the dataset's own (rotated,noisy / mnist,svhn)
    num_folds: int = 5
    fold: int = 0
    batch_size: int = 64
    eval_batch_size: int = 256
    num_workers: int = 0
    #: Two-View MNIST: ``same_image`` (the reference) or ``same_class`` (Wang et al., DCCAE).
    pairing: Literal["same_image", "same_class"] = "same_image"
    #: MNIST-SVHN (MMVAE protocol): at most this many images per class, paired this many times.
    max_per_class: int = 10_000
    pairings: int = 30
    #: MNIST-SVHN: pairing rounds served for validation and probes (1: each kept image once;
    #: the reference evaluated all 30 rounds, 30 copies of the same images).
    eval_pairings: int | None = 1
    #: Neuroimaging: the manifest CSV (see ``mmssl.data.neuro``) and how to treat bad rows.
    manifest: str | None = None
    on_bad_row: Literal["error", "skip"] = "error"
    cache_dir: str | None = None
    val_fraction: float = 0.2
    label_mapping: dict[str, int] | None = None
    preprocessing: PreprocessingConfig = field(default_factory=PreprocessingConfig)
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)


@dataclass
class ModelConfig:
    """Encoder and projection heads (paper: DCGAN, width 32, latent 64, 8×8 tap)."""

    encoder: Literal["dcgan"] = "dcgan"
    width: int = 32
    latent_dim: int = 64
    local_taps: list[str] | None = None
    head_dim: int = 64


@dataclass
class ObjectiveConfig:
    """The taxonomy objective and its estimator (paper: scaled dot, clip 20, penalty 0.04)."""

    name: str = "CR-XX-CC-RR"
    weights: dict[str, float] = field(default_factory=dict)
    critic: Literal["scaled_dot", "dot", "cosine"] = "scaled_dot"
    clip: float | None = 20.0
    penalty_weight: float = 0.04
    temperature: float = 1.0
    weight_penalty: bool = False


@dataclass
class CCAConfig:
    """Deep CCA term (DCCAE, CR-CCA): Andrew et al. 2013; Wang et al. 2015."""

    weight: float = 1.0
    r1: float = 1e-3
    r2: float = 1e-3
    top_k: int | None = None
    #: ``trace``: sum of canonical correlations (the DCCA objective); ``frobenius``: the
    #: reference implementation's root of the sum of squares.
    variant: Literal["trace", "frobenius"] = "trace"
    #: correlate the projection-head outputs (the reference) or the representations z.
    on: Literal["head", "z"] = "head"


@dataclass
class AEConfig:
    """Reconstruction term of the autoencoder family (AE, DCCAE, RR-AE)."""

    loss: Literal["mse", "bce"] = "mse"
    weight: float = 1.0


@dataclass
class MMVAEConfig:
    """MMVAE (Shi et al., NeurIPS 2019) defaults of its MNIST-SVHN protocol."""

    latent_dim: int = 20
    K: int = 30
    estimator: Literal["dreg", "iwae"] = "dreg"
    likelihood_scale: float = 0.75
    #: ``auto`` rescales each modality's log-likelihood by (largest input size / its size).
    likelihood_weights: Literal["auto", "none"] = "auto"


@dataclass
class SupervisedConfig:
    """Supervised baseline: a linear classifier on z, cross-entropy, per modality."""

    label_smoothing: float = 0.0


@dataclass
class OptimConfig:
    """Optimiser and schedule (paper: RAdam 4e-4, OneCycle to 1e-2 stepped per batch)."""

    optimizer: Literal["radam", "adam", "adamw", "sgd"] = "radam"
    lr: float = 4e-4
    weight_decay: float = 0.0
    scheduler: Literal["onecycle", "none"] = "onecycle"
    max_lr: float = 1e-2


@dataclass
class TrainerConfig:
    """Lightning trainer settings; nothing here names a device unless the user does."""

    epochs: int = 50
    accelerator: str = "auto"
    devices: int = 1
    precision: str = "32-true"
    limit_train_batches: float | None = None
    log_every_n_steps: int = 10
    progress_bar: bool = True
    checkpoint: Literal["best", "last"] = "last"
    #: data-parallel settings: Lightning picks DDP for devices > 1 (or num_nodes > 1);
    #: contrastive negatives are then gathered from every process.
    num_nodes: int = 1
    strategy: str = "auto"
    sync_batchnorm: bool = False


@dataclass
class ProbeConfig:
    """Linear probe: logistic regression, inverse regularisation C chosen on validation."""

    Cs: list[float] = field(default_factory=lambda: [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0])
    max_iter: int = 2000
    #: ``balanced`` reweights classes inversely to their frequency (unequal cohorts).
    class_weight: Literal["balanced"] | None = None


@dataclass
class RunConfig:
    """Everything that defines one run; saved resolved as ``config.yaml`` in the run directory."""

    method: Literal[
        "taxonomy", "supervised", "ae", "dccae", "cr_cca", "rr_ae", "mmvae"
    ] = "taxonomy"
    seed: int = 343
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    cca: CCAConfig = field(default_factory=CCAConfig)
    ae: AEConfig = field(default_factory=AEConfig)
    mmvae: MMVAEConfig = field(default_factory=MMVAEConfig)
    supervised: SupervisedConfig = field(default_factory=SupervisedConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML-serialisable)."""
        return asdict(self)

    @property
    def modalities(self) -> list[str]:
        """The modalities in use (the dataset's own when not set; filled in by validation)."""
        return list(self.data.modalities or DATASET_MODALITIES[self.data.dataset])

    @property
    def model_name(self) -> str:
        """The name a table shows: the objective for taxonomy models, else the method."""
        return self.objective.name if self.method == "taxonomy" else self.method


#: The modalities each dataset provides, in order.
DATASET_MODALITIES: dict[str, tuple[str, ...]] = {
    "two_view_mnist": ("rotated", "noisy"),
    "mnist_svhn": ("mnist", "svhn"),
    "neuro": (),  # the manifest's path columns, named by the user
}
#: Methods that relate two or more modalities (the others train each modality on its own).
MULTIMODAL_METHODS: frozenset[str] = frozenset({"dccae", "rr_ae", "mmvae"})


def _schema_parser() -> ArgumentParser:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(RunConfig, "run")
    return parser


def _valid_keys(cls: type, prefix: str) -> list[str]:
    node: Any = cls
    for part in [p for p in prefix.split(".") if p]:
        fields = {f.name: f for f in dataclasses.fields(node)}
        if part not in fields:
            return []
        node = fields[part].type
        node = globals().get(node, node) if isinstance(node, str) else node
    if not dataclasses.is_dataclass(node):
        return []
    return [f.name for f in dataclasses.fields(node)]


def _explain(message: str, source: str) -> str:
    marker = "does not accept option '"
    if marker in message:
        group = message.split("Group '", 1)[-1].split("'", 1)[0].removeprefix("run").lstrip(".")
        key = message.split(marker, 1)[1].split("'", 1)[0]
        full = f"{group}.{key}" if group else key
        valid = _valid_keys(RunConfig, f"{group}.{key}".rsplit(".", 1)[0] if "." in key else group)
        return f"unknown key {full!r} in {source}; valid keys here: {', '.join(valid)}"
    message = " ".join(message.replace('"run.', '"').split())
    return f"invalid configuration in {source}: {message}"


def from_dict(values: Mapping[str, Any], source: str = "configuration") -> RunConfig:
    """Build and validate a :class:`RunConfig` from a nested mapping.

    Raises:
        ConfigError: naming the key, the value and what was expected.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source} must be a mapping of keys to values; got {type(values)}")
    parser = _schema_parser()
    try:
        namespace = parser.parse_object({"run": dict(values)})
        config = parser.instantiate(namespace).run
    except Exception as error:  # jsonargparse raises ArgumentError/TypeError subclasses
        raise ConfigError(_explain(str(error).strip(), source)) from None
    validate(config, source)
    return config


def validate(config: RunConfig, source: str = "configuration") -> None:
    """Checks beyond types: ranges, names and their interplay."""
    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{key}: {message} (in {source})")

    try:
        objective = Objective.parse(config.objective.name)
        resolve_weights(objective, config.objective.weights)
    except ObjectiveError as error:
        fail("objective", str(error))
    config.objective.name = objective.name
    data = config.data
    available = DATASET_MODALITIES[data.dataset]
    if data.dataset == "neuro":
        if not data.manifest:
            fail("data.manifest", "the neuro dataset needs a manifest CSV (--manifest FILE); "
                 "`mmssl simulate --out DIR` writes a synthetic one")
        if not data.modalities:
            fail("data.modalities", "name the manifest's path columns to use, e.g. "
                 "--modalities t1,falff")
        if len(data.preprocessing.shape) != 3 or data.preprocessing.voxel_size <= 0:
            fail("data.preprocessing", "shape needs 3 sizes and voxel_size must be positive")
        if data.augmentation.pad < 0:
            fail("data.augmentation.pad", f"must be ≥ 0; got {data.augmentation.pad}")
        if not 0 < data.val_fraction < 1:
            fail("data.val_fraction", f"must be in (0, 1); got {data.val_fraction}")
    if data.modalities is None:
        data.modalities = list(available)
    unknown = [m for m in data.modalities if m not in available] if available else []
    if unknown:
        fail("data.modalities", f"{unknown} not provided by {data.dataset}; valid: "
             f"{', '.join(available)}")
    if config.method in MULTIMODAL_METHODS and len(data.modalities) < 2:
        fail("method", f"{config.method} relates modalities and needs two or more; "
             f"data.modalities is {data.modalities}")
    if config.method == "taxonomy" and objective.is_cross_modal and len(data.modalities) < 2:
        cross = [m for m in objective.modes if m != "CR"]
        fail("objective.name", f"{objective.name} has cross-modal mode(s) {cross}, which need "
             f"two or more modalities; data.modalities is {data.modalities}. Use CR for one.")
    if config.cca.top_k is not None and config.cca.top_k < 1:
        fail("cca.top_k", f"must be ≥ 1 or null; got {config.cca.top_k}")
    if config.mmvae.K < 1:
        fail("mmvae.K", f"must be ≥ 1; got {config.mmvae.K}")
    if config.mmvae.latent_dim < 1:
        fail("mmvae.latent_dim", f"must be ≥ 1; got {config.mmvae.latent_dim}")
    if data.max_per_class < 1 or data.pairings < 1:
        fail("data.max_per_class/pairings", "must be ≥ 1")
    if data.eval_pairings is not None and not 1 <= data.eval_pairings <= data.pairings:
        fail("data.eval_pairings", f"must be in 1..{data.pairings} or null; got "
             f"{data.eval_pairings}")
    if config.objective.critic not in CRITICS:
        fail("objective.critic", f"expected one of {', '.join(CRITICS)}")
    if not data.modalities:
        fail("data.modalities", "needs at least one modality")
    if len(set(data.modalities)) != len(data.modalities):
        fail("data.modalities", f"repeated modality in {data.modalities}")
    if data.num_folds < 2:
        fail("data.num_folds", f"must be ≥ 2; got {data.num_folds}")
    if not 0 <= data.fold < data.num_folds:
        fail("data.fold", f"must be in 0..{data.num_folds - 1}; got {data.fold}")
    for key in ("batch_size", "eval_batch_size"):
        if getattr(data, key) < 2:
            fail(f"data.{key}", f"must be ≥ 2 (InfoNCE needs negatives); got {getattr(data, key)}")
    if data.num_workers < 0:
        fail("data.num_workers", f"must be ≥ 0; got {data.num_workers}")
    if config.trainer.epochs < 1:
        fail("trainer.epochs", f"must be ≥ 1; got {config.trainer.epochs}")
    for key in ("lr", "max_lr"):
        if getattr(config.optim, key) <= 0:
            fail(f"optim.{key}", f"must be positive; got {getattr(config.optim, key)}")
    for key in ("width", "latent_dim", "head_dim"):
        if getattr(config.model, key) < 1:
            fail(f"model.{key}", f"must be ≥ 1; got {getattr(config.model, key)}")
    if not config.probe.Cs or any(c <= 0 for c in config.probe.Cs):
        fail("probe.Cs", f"needs positive values; got {config.probe.Cs}")
    if config.objective.clip is not None and config.objective.clip <= 0:
        fail("objective.clip", f"must be positive or null; got {config.objective.clip}")


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


def load_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; errors name the file."""
    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path} is not valid YAML: {error}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping; got {type(values).__name__}")
    return values


def preset(name: str) -> dict[str, Any]:
    """The raw values of a packaged preset."""
    names = preset_names()
    if name not in names:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(names)}")
    text = (resources.files("mmssl") / "presets" / f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


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
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted!r}: {part!r} is not a section")
    node[last] = value


def resolve(
    preset_name: str | None = None,
    config_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RunConfig:
    """Defaults ← preset ← config file ← overrides (dotted keys), validated."""
    values: dict[str, Any] = {}
    sources = []
    if preset_name:
        values = merge(values, preset(preset_name))
        sources.append(f"preset {preset_name!r}")
    if config_file:
        values = merge(values, load_yaml(config_file))
        sources.append(str(config_file))
    for dotted, value in (overrides or {}).items():
        set_dotted(values, dotted, value)
    if overrides:
        sources.append("command-line flags")
    return from_dict(values, " + ".join(sources) or "defaults")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and a rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_figure(figure: Any, path: Path) -> Path:
    """Save a matplotlib figure as PNG via a temporary file and a rename, then close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        figure.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(figure)
    return path


def save(config: RunConfig, path: Path) -> None:
    """Save the resolved configuration as YAML, atomically."""
    write_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def load(path: Path) -> RunConfig:
    """Load and validate a saved ``config.yaml``."""
    return from_dict(load_yaml(path), str(path))
