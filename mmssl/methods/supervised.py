"""Supervised baseline: each modality's encoder trained with its own linear classifier."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmssl.methods.base import MultimodalMethod, register_method

if TYPE_CHECKING:
    from mmssl.config import RunConfig


@register_method("supervised")
class SupervisedMethod(MultimodalMethod):
    r"""Encoder plus linear classifier per modality, trained with cross-entropy.

    .. math:: \mathcal{L} = \sum_i \mathrm{CE}\bigl(W_i z_i + b_i,\ y\bigr)

    The modalities do not interact (one run trains each modality's supervised model), and the
    encoders are then probed exactly like the self-supervised ones — the upper reference of
    Fedorov et al. (arXiv 2012.13623, §4). Classifier init as the reference: Xavier-uniform
    weights, bias 1/K.
    """

    def __init__(
        self,
        modalities: Sequence[str],
        input_shapes: Mapping[str, Sequence[int]],
        model: Mapping[str, Any],
        optim: Mapping[str, Any],
        num_classes: int,
        supervised: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(modalities, input_shapes, model, optim, seed)
        if num_classes < 2:
            raise ValueError(f"supervised training needs ≥ 2 classes; got {num_classes}")
        self.label_smoothing = float((supervised or {}).get("label_smoothing", 0.0))
        self.classifiers = nn.ModuleDict()
        for modality in self.modalities:
            layer = nn.Linear(self.encoder(modality).latent_dim, num_classes)
            nn.init.xavier_uniform_(layer.weight)
            nn.init.constant_(layer.bias, 1.0 / num_classes)
            self.classifiers[modality] = layer

    @classmethod
    def config_kwargs(
        cls, config: RunConfig, input_shapes: Mapping[str, Sequence[int]], num_classes: int
    ) -> dict[str, Any]:
        return {**super().config_kwargs(config, input_shapes, num_classes),
                "num_classes": num_classes, "supervised": asdict(config.supervised)}

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
