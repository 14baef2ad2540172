"""What every method shares: encoders per modality, the optimiser and schedule, and a registry."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import torch
from torch import Tensor, nn

from mmssl.nn import DCGANEncoder, default_local_tap

if TYPE_CHECKING:
    from mmssl.config import RunConfig

METHODS: dict[str, type[MultimodalMethod]] = {}


def register_method(name: str) -> Callable[[type[MultimodalMethod]], type[MultimodalMethod]]:
    """Class decorator: make a method available to the CLI and sweeps under ``name``."""

    def decorator(cls: type[MultimodalMethod]) -> type[MultimodalMethod]:
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        METHODS[name] = cls
        cls.method_name = name
        return cls

    return decorator


def method_class(name: str) -> type[MultimodalMethod]:
    """The registered class for ``name``; the error lists the registered methods."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


class MultimodalMethod(L.LightningModule):
    """Base class: one DCGAN encoder per named modality, RAdam + OneCycle by default.

    Subclasses implement :meth:`compute_loss`, returning the total loss and named terms.
    ``encoders[modality](x).z`` is the downstream representation used by every evaluation.
    """

    method_name = "base"

    def __init__(
        self,
        modalities: Sequence[str],
        input_shapes: Mapping[str, Sequence[int]],
        model: Mapping[str, Any],
        optim: Mapping[str, Any],
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.modalities = list(modalities)
        self.seed = seed
        self.optim_settings = dict(optim)
        taps = model.get("local_taps")
        self.encoders = nn.ModuleDict()
        for modality in self.modalities:
            channels, *spatial = input_shapes[modality]
            if len(set(spatial)) != 1:
                raise ValueError(
                    f"modality {modality!r}: inputs must be square/cubic; got {spatial}"
                )
            self.encoders[modality] = DCGANEncoder(
                in_channels=channels,
                input_size=spatial[0],
                spatial_dims=len(spatial),
                width=model.get("width", 32),
                latent_dim=model.get("latent_dim", 64),
                taps=list(taps) if taps is not None else [default_local_tap(spatial[0])],
            )

    @classmethod
    def from_config(
        cls, config: RunConfig, input_shapes: Mapping[str, Sequence[int]], num_classes: int
    ) -> MultimodalMethod:
        """Build the method from a validated run configuration and the data's shapes."""
        return cls(**cls.config_kwargs(config, input_shapes, num_classes))

    @classmethod
    def config_kwargs(
        cls, config: RunConfig, input_shapes: Mapping[str, Sequence[int]], num_classes: int
    ) -> dict[str, Any]:
        """Constructor arguments (plain values, saved as hyperparameters in checkpoints)."""
        return {
            "modalities": config.modalities,
            "input_shapes": {m: tuple(input_shapes[m]) for m in config.modalities},
            "model": asdict(config.model),
            "optim": asdict(config.optim),
            "seed": config.seed,
        }

    def encoder(self, modality: str) -> DCGANEncoder:
        """The encoder of ``modality``."""
        return cast(DCGANEncoder, self.encoders[modality])

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
        batch_size = len(batch["label"])
        self.log("train/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()},
                      batch_size=batch_size)
        return loss

    def validation_step(self, batch: Mapping[str, Tensor], batch_idx: int) -> None:
        loss, terms = self.compute_loss(batch, self._generator("val", batch_idx))
        batch_size = len(batch["label"])
        self.log("val/loss", loss, prog_bar=True, batch_size=batch_size)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, batch_size=batch_size)

    def configure_optimizers(self) -> Any:
        settings = self.optim_settings
        name = settings.get("optimizer", "radam")
        lr = settings.get("lr", 4e-4)
        weight_decay = settings.get("weight_decay", 0.0)
        params = [p for p in self.parameters() if p.requires_grad]
        optimizers: dict[str, Callable[[], torch.optim.Optimizer]] = {
            "radam": lambda: torch.optim.RAdam(params, lr=lr, weight_decay=weight_decay),
            "adam": lambda: torch.optim.Adam(params, lr=lr, weight_decay=weight_decay),
            "adamw": lambda: torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay),
            "sgd": lambda: torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True,
                                           weight_decay=weight_decay),
        }
        if name not in optimizers:
            raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(optimizers)}")
        optimizer = optimizers[name]()
        if settings.get("scheduler", "onecycle") == "none":
            return optimizer
        # OneCycle from lr (= max_lr / div_factor) up to max_lr, stepped every batch.
        max_lr = settings.get("max_lr", 1e-2)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=max_lr,
            total_steps=int(self.trainer.estimated_stepping_batches),
            div_factor=max_lr / lr,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler,
                                                         "interval": "step"}}

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
