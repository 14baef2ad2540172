"""What every method shares: encoders per modality, settings, the optimiser, and a registry.

A method is a :class:`MultimodalMethod` subclass that declares, as class attributes,

* ``name`` — how configurations and the command line refer to it,
* ``traits`` — :class:`MethodTraits`: whether it relates modalities (needs two or more), has
  decoders, needs labels to pretrain, handles sessions that lack a modality,
* ``sections`` — the configuration sections it reads besides ``model`` and ``optim``, each a
  settings dataclass (e.g. ``{"ae": AESettings, "cca": CCASettings}``); a section may be shared
  by several methods (``objective`` by the taxonomy, CR-CCA and RR-AE),
* ``summary`` and ``paper`` — one line each for ``mmssl list``,

and is made available with :func:`register_method`. The configuration, its validation,
``mmssl list``, the sweep and the claims all read this registry, so a new method is one module
(plus a preset and a test). Methods receive their settings as typed objects; checkpoints store
them as plain values (``weights_only`` loading) and :meth:`MultimodalMethod.from_hparams`
rebuilds them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, cast

import lightning as L
import torch
from torch import Tensor, nn

from mmssl import __version__
from mmssl.errors import TrainingDiverged
from mmssl.nn import DCGANEncoder, PCAEncoder, default_local_tap
from mmssl.settings import from_mapping, require, to_dict

if TYPE_CHECKING:
    from mmssl.config import RunConfig

#: what ``encoders[modality]`` holds: both give ``EncoderOutput`` and the attributes methods read
Encoder = DCGANEncoder | PCAEncoder

__all__ = [
    "Encoder",
    "METHODS",
    "MethodInputs",
    "MethodTraits",
    "ModelSettings",
    "MultimodalMethod",
    "OptimSettings",
    "compile_units",
    "make_optimizer",
    "method_class",
    "method_sections",
    "register_method",
]


@dataclass
class ModelSettings:
    """Encoder and projection heads (paper: DCGAN, width 32, latent 64, the 8×8(×8) tap).

    ``encoder: pca`` swaps the DCGAN for :class:`~mmssl.nn.PCAEncoder` (a whitened PCA stem of
    ``pca_components`` components fitted on the training volumes, then a linear map to
    ``latent_dim``): no local features, so objectives with CR, XX or CC terms are refused.
    ``global_head: none`` takes R = z in the taxonomy's global terms (RR) instead of the MLP
    head: with a linear encoder the objective then stays linear in the stem, as CCA is.
    """

    encoder: Literal["dcgan", "pca"] = "dcgan"
    width: int = 32
    latent_dim: int = 64
    #: encoder blocks whose raw maps are the local features C (default: the 8-side map)
    local_taps: list[str] | None = None
    head_dim: int = 64
    #: principal components of the PCA stem (``encoder: pca`` only)
    pca_components: int = 32
    #: the taxonomy's projection of z to R: the paper's MLP, or none (R = z; global terms only)
    global_head: Literal["mlp", "none"] = "mlp"

    def validate(self) -> None:
        for key in ("width", "latent_dim", "head_dim", "pca_components"):
            require(getattr(self, key) >= 1, key, f"must be ≥ 1; got {getattr(self, key)}")
        require(self.encoder != "pca" or not self.local_taps, "local_taps",
                f"encoder pca has no local features; got local_taps {self.local_taps}")


@dataclass
class OptimSettings:
    """Optimiser and schedule (paper: RAdam 4e-4, OneCycle up to 1e-2 stepped per batch)."""

    optimizer: Literal["radam", "adam", "adamw", "sgd"] = "radam"
    lr: float = 4e-4
    weight_decay: float = 0.0
    scheduler: Literal["onecycle", "none"] = "onecycle"
    max_lr: float = 1e-2

    def validate(self) -> None:
        require(self.lr > 0, "lr", f"must be positive; got {self.lr}")
        require(self.max_lr > 0, "max_lr", f"must be positive; got {self.max_lr}")
        require(self.weight_decay >= 0, "weight_decay", f"must be ≥ 0; got {self.weight_decay}")


@dataclass(frozen=True)
class MethodTraits:
    """What the rest of mmssl needs to know about a method."""

    #: relates two or more modalities (needs them; a multimodal baseline in the claims)
    relates_modalities: bool
    #: reconstructs its inputs with decoders (a decoder-based baseline in the claims)
    has_decoders: bool = False
    #: pretrains with labels (an upper reference, not self-supervised)
    needs_labels: bool = False
    #: trains on batches whose sessions may lack a modality (``batch["present"]``); a method
    #: without it refuses a cohort with incomplete sessions (:func:`mmssl.runs.build.build_method`)
    handles_missing_modalities: bool = False


@dataclass(frozen=True)
class MethodInputs:
    """What a method is built for: the modalities, their input shapes, the classes, a seed."""

    modalities: tuple[str, ...]
    input_shapes: dict[str, tuple[int, ...]]
    num_classes: int = 0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"modalities": list(self.modalities),
                "input_shapes": {m: list(s) for m, s in self.input_shapes.items()},
                "num_classes": self.num_classes, "seed": self.seed}


METHODS: dict[str, type[MultimodalMethod]] = {}


def register_method(cls: type[MultimodalMethod]) -> type[MultimodalMethod]:
    """Class decorator: make a method available to configurations, the CLI and sweeps."""
    name = cls.__dict__.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__qualname__} needs a class attribute `name`")
    if name in METHODS and METHODS[name] is not cls:
        raise ValueError(f"method {name!r} is registered twice")
    if "traits" not in cls.__dict__:
        raise ValueError(f"method {name!r} needs a class attribute `traits` (MethodTraits)")
    known = method_sections()
    for section, settings in cls.sections.items():
        if section in ("model", "optim", "data", "trainer", "probe", "method", "seed"):
            raise ValueError(f"method {name!r}: section name {section!r} is reserved")
        if known.get(section, settings) is not settings:
            raise ValueError(f"method {name!r}: section {section!r} is already declared with "
                             f"{known[section].__qualname__}, not {settings.__qualname__}")
    METHODS[name] = cls
    return cls


def method_class(name: str) -> type[MultimodalMethod]:
    """The registered class for ``name``; the error lists the registered methods."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def method_sections() -> dict[str, type]:
    """Every configuration section a registered method reads, with its settings class."""
    sections: dict[str, type] = {}
    for cls in METHODS.values():
        sections.update(cls.sections)
    return sections


class MultimodalMethod(L.LightningModule):
    """Base class: one DCGAN encoder per named modality, RAdam + OneCycle by default.

    Subclasses implement :meth:`compute_loss`, returning the total loss and named terms.
    ``encoders[modality](x).z`` is the downstream representation used by every evaluation.
    A non-finite training loss stops the run at once (:class:`~mmssl.errors.TrainingDiverged`,
    naming the step, the epoch and the terms that went non-finite).
    """

    name: ClassVar[str] = "base"
    traits: ClassVar[MethodTraits] = MethodTraits(relates_modalities=False)
    sections: ClassVar[dict[str, type]] = {}  # noqa: RUF012 - declared per subclass
    summary: ClassVar[str] = ""
    paper: ClassVar[str] = ""

    def __init__(
        self,
        inputs: MethodInputs,
        model: ModelSettings,
        optim: OptimSettings,
        **sections: Any,
    ) -> None:
        super().__init__()
        missing = set(self.sections) - set(sections)
        if missing:
            raise ValueError(f"{self.name} needs the settings section(s) {sorted(missing)}")
        self.save_hyperparameters({
            "inputs": inputs.to_dict(), "model": to_dict(model), "optim": to_dict(optim),
            "sections": {k: to_dict(v) for k, v in sections.items()},
        })
        self.inputs = inputs
        self.settings_sections = dict(sections)
        self.modalities = list(inputs.modalities)
        self.seed = inputs.seed
        self.model_settings = model
        self.optim_settings = optim
        self.encoders = nn.ModuleDict()
        for modality in self.modalities:
            self.encoders[modality] = self.build_encoder(modality)

    def build_encoder(self, modality: str, latent_dim: int | None = None) -> Encoder:
        """The encoder of ``modality`` (square/cubic inputs): the DCGAN with the configured
        taps, or the PCA-stem encoder (``model.encoder: pca``)."""
        channels, *spatial = self.inputs.input_shapes[modality]
        if len(set(spatial)) != 1:
            raise ValueError(f"modality {modality!r}: inputs must be square/cubic; got {spatial}")
        if self.model_settings.encoder == "pca":
            return PCAEncoder(in_channels=channels, input_size=spatial[0],
                              spatial_dims=len(spatial),
                              components=self.model_settings.pca_components,
                              latent_dim=latent_dim or self.model_settings.latent_dim)
        taps = self.model_settings.local_taps
        return DCGANEncoder(
            in_channels=channels, input_size=spatial[0], spatial_dims=len(spatial),
            width=self.model_settings.width,
            latent_dim=latent_dim or self.model_settings.latent_dim,
            taps=list(taps) if taps is not None else [default_local_tap(spatial[0])],
        )

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_config(
        cls, config: RunConfig, input_shapes: Mapping[str, Sequence[int]], num_classes: int
    ) -> MultimodalMethod:
        """Build the method from a validated run configuration and the data's shapes."""
        inputs = MethodInputs(
            modalities=tuple(config.modalities),
            input_shapes={m: tuple(input_shapes[m]) for m in config.modalities},
            num_classes=int(num_classes), seed=config.seed,
        )
        return cls(inputs, config.model, config.optim,
                   **{name: config.section(name) for name in cls.sections})

    @classmethod
    def create(
        cls,
        modalities: Sequence[str],
        input_shapes: Mapping[str, Sequence[int]],
        *,
        num_classes: int = 0,
        seed: int = 0,
        model: ModelSettings | Mapping[str, Any] | None = None,
        optim: OptimSettings | Mapping[str, Any] | None = None,
        **sections: Any,
    ) -> MultimodalMethod:
        """Build the method directly (notebooks, tests): settings as objects or plain mappings
        (missing sections get their defaults), checked like a configuration's.

        Example: ``TaxonomyMethod.create(["t1", "falff"], {"t1": (1, 64, 64, 64), ...},
        objective={"name": "CR-XX"})``.
        """
        def settings(kind: type, value: Any, name: str) -> Any:
            return value if isinstance(value, kind) else from_mapping(kind, value or {}, name)

        inputs = MethodInputs(tuple(modalities), {m: tuple(input_shapes[m]) for m in modalities},
                              num_classes, seed)
        unknown = set(sections) - set(cls.sections)
        if unknown:
            raise ValueError(f"{cls.name} has no settings section(s) {sorted(unknown)}; its "
                             f"sections: {sorted(cls.sections)}")
        return cls(inputs, settings(ModelSettings, model, "model"),
                   settings(OptimSettings, optim, "optim"),
                   **{name: settings(kind, sections.get(name), name)
                      for name, kind in cls.sections.items()})

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any]) -> MultimodalMethod:
        """Rebuild the method from the plain values saved in a checkpoint.

        Reads this layout and the one of earlier mmssl versions (flat keys: ``modalities``,
        ``input_shapes``, ``seed``, ``num_classes`` and one key per section).
        """
        if "inputs" in hparams:
            raw_inputs = dict(hparams["inputs"])
            raw_sections = dict(hparams.get("sections", {}))
        else:
            raw_inputs = {k: hparams.get(k) for k in ("modalities", "input_shapes", "seed",
                                                      "num_classes")}
            raw_sections = {k: hparams.get(k) or {} for k in cls.sections}
        inputs = MethodInputs(
            modalities=tuple(raw_inputs["modalities"]),
            input_shapes={m: tuple(s) for m, s in raw_inputs["input_shapes"].items()},
            num_classes=int(raw_inputs.get("num_classes") or 0),
            seed=int(raw_inputs.get("seed") or 0),
        )
        sections: dict[str, Any] = {
            name: from_mapping(settings, _known_keys(settings, raw_sections.get(name)), name)
            for name, settings in cls.sections.items()}
        return cls(inputs, from_mapping(ModelSettings, _known_keys(ModelSettings,
                                                                   hparams.get("model")), "model"),
                   from_mapping(OptimSettings, _known_keys(OptimSettings, hparams.get("optim")),
                                "optim"), **sections)

    @classmethod
    def check_config(cls, config: RunConfig) -> str | None:
        """Why this method cannot run with ``config`` (None when it can); checked with the
        configuration, before anything runs."""
        return None

    @classmethod
    def model_name(cls, config: RunConfig) -> str:
        """The name a table shows for a run of this method (the taxonomy shows its objective)."""
        return cls.name

    # -- use -----------------------------------------------------------------------------------
    def section(self, name: str) -> Any:
        """The settings of one of this method's configuration sections."""
        return self.settings_sections[name]

    def encoder(self, modality: str) -> Encoder:
        """The encoder of ``modality``."""
        return cast(Encoder, self.encoders[modality])

    @torch.no_grad()
    def fit_stems(self, volumes: Callable[[str], Tensor]) -> dict[str, dict[str, float]]:
        """Fit every encoder stem that learns from data before training (the PCA encoder's);
        ``volumes(modality)`` gives that modality's unaugmented training volumes. Returns what
        each fitted stem kept, by modality (empty for DCGAN encoders, which have none)."""
        fitted: dict[str, dict[str, float]] = {}
        for modality in self.modalities:
            encoder = self.encoders[modality]
            if isinstance(encoder, PCAEncoder):
                fitted[modality] = encoder.fit(volumes(modality))
        return fitted

    @classmethod
    def needs_local_features(cls, config: RunConfig) -> bool:
        """Whether a run of this method with ``config`` uses the encoders' local maps (C)."""
        return False

    def compute_loss(
        self, batch: Mapping[str, Tensor], generator: torch.Generator | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and named terms for a batch of views."""
        raise NotImplementedError

    def _generator(self, stage: str, batch_idx: int) -> torch.Generator:
        # A per-step random source: reproducible and resume-exact, independent of history.
        offset = {"train": 0, "val": 1 << 40}[stage]
        step = self.global_step if stage == "train" else batch_idx
        return torch.Generator().manual_seed(self.seed * 1_000_003 + offset + step)

    def training_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> Tensor:
        loss, terms = self.compute_loss(batch, self._generator("train", batch_idx))
        if not torch.isfinite(loss.detach()):
            self._diverged(loss, terms)
        batch_size = len(batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()},
                      batch_size=batch_size)
        return loss

    def _diverged(self, loss: Tensor, terms: Mapping[str, Tensor]) -> None:
        bad = [f"{k} = {v.detach().float().mean().item():.4g}" for k, v in terms.items()
               if not torch.isfinite(v.detach()).all()]
        which = (f"non-finite terms: {', '.join(bad)}" if bad
                 else "every term is finite, their weighted sum is not")
        raise TrainingDiverged(
            f"training diverged at epoch {self.current_epoch}, step {self.global_step}: the loss "
            f"is {loss.detach().item()} ({which}). Lower the learning rate (optim.lr, and "
            "optim.max_lr with the OneCycle schedule) or check the inputs for NaN/inf values"
        )

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        loss, terms = self.compute_loss(batch, self._generator("val", batch_idx))
        batch_size = len(batch["label"])
        self.log("val/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, batch_size=batch_size)

    #: How the run lays out and compiles the model (plain values, set by
    #: :mod:`mmssl.runs.performance`); saved in the checkpoint so a resumed run keeps it.
    performance_record: dict[str, Any] | None = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Mark the checkpoint as mmssl's, with the method's name (checked when loading), and
        the run's :attr:`performance_record` (memory format) when there is one."""
        checkpoint["mmssl"] = {"format": 1, "method": self.name, "version": __version__}
        if self.performance_record is not None:
            checkpoint["mmssl"]["performance"] = dict(self.performance_record)

    def compile_modules(self) -> list[nn.Module]:
        """The sub-modules ``trainer.compile`` compiles in place: every encoder, head and
        decoder (:func:`compile_units`); the objectives stay eager."""
        return compile_units(self)

    def configure_optimizers(self) -> Any:
        settings = self.optim_settings
        optimizer = make_optimizer(settings, [p for p in self.parameters() if p.requires_grad])
        if settings.scheduler == "none":
            return optimizer
        # OneCycle from lr (= max_lr / div_factor) up to max_lr, stepped every batch.
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=settings.max_lr,
            total_steps=int(self.trainer.estimated_stepping_batches),
            div_factor=settings.max_lr / settings.lr,
        )
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    @property
    def distributed(self) -> bool:
        """Whether training runs in several processes (contrastive terms then gather)."""
        trainer = self._trainer
        return trainer is not None and trainer.world_size > 1

    def probe_encoders(self) -> dict[str, dict[str, nn.Module]]:
        """Modules mapping each modality's input to the representation a probe evaluates.

        The key ``""`` is the representation of ``metrics.json``; other keys are extra
        variants (e.g. MMVAE's sampled z) written as ``metrics_<key>.json``.
        """
        return {"": {m: self.encoder(m) for m in self.modalities}}

    def encode(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """z per modality (the downstream representation)."""
        return {m: self.encoders[m](batch[m]).z for m in self.modalities}


def make_optimizer(settings: OptimSettings, params: Sequence[nn.Parameter]
                   ) -> torch.optim.Optimizer:
    """The optimiser ``settings`` name over ``params`` at the base learning rate ``lr`` (the
    OneCycle schedule, when configured, is added by :meth:`MultimodalMethod.configure_optimizers`).
    """
    params = list(params)
    lr, decay = settings.lr, settings.weight_decay
    # The multi-tensor (foreach) update everywhere: PyTorch picks it only for CUDA tensors, yet
    # on the CPU it also does a step of the paper's model in about two thirds of the time of the
    # per-parameter loop (benchmarks/README.md), with the same update up to float rounding.
    optimizers: dict[str, Callable[[], torch.optim.Optimizer]] = {
        "radam": lambda: torch.optim.RAdam(params, lr=lr, weight_decay=decay, foreach=True),
        "adam": lambda: torch.optim.Adam(params, lr=lr, weight_decay=decay, foreach=True),
        "adamw": lambda: torch.optim.AdamW(params, lr=lr, weight_decay=decay, foreach=True),
        "sgd": lambda: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True,
                                       weight_decay=decay, foreach=True),
    }
    return optimizers[settings.optimizer]()


def compile_units(module: nn.Module) -> list[nn.Module]:
    """The modules below ``module``'s containers: each child that is not a
    :class:`~torch.nn.ModuleDict` or :class:`~torch.nn.ModuleList`, and the members of those
    containers, recursively (an encoder, a head, a decoder — each one graph for
    :func:`torch.compile`)."""
    units: list[nn.Module] = []
    for child in module.children():
        if isinstance(child, nn.ModuleDict | nn.ModuleList):
            units.extend(compile_units(child))
        else:
            units.append(child)
    return units


def _known_keys(settings: type, values: Mapping[str, Any] | None) -> dict[str, Any]:
    """The entries of ``values`` that ``settings`` still has (older checkpoints may have more)."""
    names = set(getattr(settings, "__dataclass_fields__", {}))
    return {k: v for k, v in (values or {}).items() if k in names}

