"""Supervised baseline: each modality's encoder trained with its own linear classifier."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.methods.base import (
    MethodInputs,
    MethodTraits,
    ModelSettings,
    MultimodalMethod,
    OptimSettings,
    register_method,
)
from mmssl.settings import require


@dataclass
class SupervisedSettings:
    """Supervised baseline: label smoothing of the cross-entropy."""

    label_smoothing: float = 0.0

    def validate(self) -> None:
        require(0 <= self.label_smoothing < 1, "label_smoothing",
                f"must be in [0, 1); got {self.label_smoothing}")


@register_method
class SupervisedMethod(MultimodalMethod):
    r"""Encoder plus linear classifier per modality, trained with cross-entropy.

    .. math:: \mathcal{L} = \sum_i \mathrm{CE}\bigl(W_i z_i + b_i,\ y\bigr)

    The modalities do not interact (one run trains each modality's supervised model), and the
    encoders are then probed exactly like the self-supervised ones — the upper reference of
    Fedorov et al. (arXiv 2012.13623, §4). Classifier init as the reference: Xavier-uniform
    weights, bias 1/K.
    """

    name = "supervised"
    traits = MethodTraits(relates_modalities=False, needs_labels=True)
    sections = {"supervised": SupervisedSettings}
    summary = "encoder + linear classifier per modality, cross-entropy"
    paper = "upper reference"

    def __init__(self, inputs: MethodInputs, model: ModelSettings, optim: OptimSettings,
                 **sections: object) -> None:
        super().__init__(inputs, model, optim, **sections)
        if inputs.num_classes < 2:
            raise ValueError(f"supervised training needs ≥ 2 classes; got {inputs.num_classes}")
        self.label_smoothing = cast(SupervisedSettings, sections["supervised"]).label_smoothing
        self.classifiers = nn.ModuleDict()
        for modality in self.modalities:
            layer = nn.Linear(self.encoder(modality).latent_dim, inputs.num_classes)
            nn.init.xavier_uniform_(layer.weight)
            nn.init.constant_(layer.bias, 1.0 / inputs.num_classes)
            self.classifiers[modality] = layer

    def compute_loss(
        self, batch: Mapping[str, Tensor], generator: torch.Generator | None
    ) -> tuple[Tensor, dict[str, Tensor]]:
        labels = batch["label"]
        terms: dict[str, Tensor] = {}
        total = torch.zeros((), device=labels.device)
        for modality in self.modalities:
            logits = self.classifiers[modality](self.encoder(modality)(batch[modality]).z)
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
            terms[f"CE/{modality}"] = loss
            terms[f"accuracy/{modality}"] = (logits.argmax(1) == labels).float().mean().detach()
            total = total + loss
        return total, terms
