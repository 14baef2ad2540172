"""A toy method in one module: NT-Xent (SimCLR's loss) between two modalities' representations.

The worked example of CONTRIBUTING.md. Import it as a plugin (``MMSSL_PLUGINS=toy_method``
with this folder on ``PYTHONPATH``), or copy it into ``mmssl/methods/`` to make it built-in;
then ``mmssl run --method toy_ntxent --set toy_ntxent.temperature=0.2``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mmssl.methods import MethodTraits, MultimodalMethod, register_method
from mmssl.settings import require


@dataclass
class ToyNTXentSettings:
    """The configuration section ``toy_ntxent``: the softmax temperature τ."""

    temperature: float = 0.5

    def validate(self) -> None:
        require(self.temperature > 0, "temperature", f"must be positive; got {self.temperature}")


@register_method
class ToyNTXentMethod(MultimodalMethod):
    r"""NT-Xent between the first two modalities' z (Chen et al., ICML 2020, SimCLR):

    .. math:: \mathcal{L} = \tfrac12\bigl(\mathrm{CE}(S, I) + \mathrm{CE}(S^\top, I)\bigr),
              \quad S_{ij} = \cos(z^a_i, z^b_j) / \tau .
    """

    name = "toy_ntxent"
    traits = MethodTraits(relates_modalities=True)
    sections = {"toy_ntxent": ToyNTXentSettings}
    summary = "toy example: NT-Xent between two modalities' z"
    paper = "Chen et al., ICML 2020"

    def compute_loss(self, batch: Mapping[str, Tensor], generator: torch.Generator | None
                     ) -> tuple[Tensor, dict[str, Tensor]]:
        z = self.encode(batch)
        a, b = (F.normalize(z[m], dim=1) for m in self.modalities[:2])
        scores = a @ b.T / self.section("toy_ntxent").temperature
        targets = torch.arange(len(a), device=a.device)
        loss = 0.5 * (F.cross_entropy(scores, targets) + F.cross_entropy(scores.T, targets))
        return loss, {"ntxent": loss.detach()}
