"""The Deep CCA term shared by DCCAE and CR-CCA, over every unordered pair of modalities."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from torch import Tensor

from mmssl.objectives.cca import dcca_loss


def dcca_terms(
    representations: Mapping[str, Tensor], settings: Mapping[str, Any]
) -> dict[str, Tensor]:
    r"""``CCA/a:b`` → :math:`-\sum_k \rho_k` (or the Frobenius variant) for each pair a < b.

    Each unordered pair is counted once (the reference counted both orders, doubling it).
    """
    return {
        f"CCA/{a}:{b}": dcca_loss(
            representations[a], representations[b],
            r1=settings.get("r1", 1e-3), r2=settings.get("r2", 1e-3),
            top_k=settings.get("top_k"), variant=settings.get("variant", "trace"),
        )
        for a, b in itertools.combinations(list(representations), 2)
    }
