"""Projection heads used only by the objectives (discarded for evaluation).

Fedorov et al., arXiv 2012.13623, §3, after AMDIM (Bachman et al., 2019): a residual 1×1
convolutional MLP projects every location of a local map, an MLP projects the global output.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mmssl.nn.encoders import batch_norm, conv_layer


class LocalHead(nn.Module):
    r"""Residual 1×1 MLP applied at every location of a (B, C_in, *spatial) map.

    .. math:: h(x) = \mathrm{BN}\bigl(W_2\,\mathrm{ReLU}(\mathrm{BN}(W_1 x)) + W_s x\bigr)

    with 1×1 convolutions :math:`W_1: C_{in}\to h`, :math:`W_2: h\to d`, shortcut
    :math:`W_s: C_{in}\to d` (near-identity when :math:`d \ge C_{in}`). Output (B, d, L) with
    the L locations flattened.
    """

    def __init__(self, in_channels: int, out_dim: int = 64, hidden: int = 64,
                 spatial_dims: int = 2) -> None:
        super().__init__()
        conv = conv_layer(spatial_dims)
        norm = batch_norm(spatial_dims)
        self.main = nn.Sequential(
            conv(in_channels, hidden, 1, bias=False),
            norm(hidden),
            nn.ReLU(inplace=True),  # after BatchNorm: its own buffer
            conv(hidden, out_dim, 1, bias=False),
        )
        self.shortcut = conv(in_channels, out_dim, 1, bias=False)
        self.norm = norm(out_dim)
        gain = nn.init.calculate_gain("relu")
        for layer in self.main:
            if isinstance(layer, nn.Conv2d | nn.Conv3d):
                nn.init.xavier_uniform_(layer.weight, gain=gain)
        if out_dim >= in_channels:
            with torch.no_grad():
                weight = self.shortcut.weight.view(out_dim, in_channels)
                weight.uniform_(-0.01, 0.01)
                weight += torch.eye(out_dim, in_channels)

    def forward(self, x: Tensor) -> Tensor:
        """Project a map to (B, out_dim, L)."""
        return self.norm(self.main(x) + self.shortcut(x)).flatten(2)


class GlobalHead(nn.Module):
    r"""MLP on the global output: :math:`W_2\,\mathrm{ReLU}(\mathrm{BN}(W_1 z))` (no biases)."""

    def __init__(self, in_dim: int = 64, out_dim: int = 64, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_dim, hidden, bias=False),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),  # after BatchNorm: its own buffer
            nn.Linear(hidden, out_dim, bias=False),
        )
        gain = nn.init.calculate_gain("relu")
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight, gain=gain)

    def forward(self, z: Tensor) -> Tensor:
        """Project z (B, in_dim) to (B, out_dim)."""
        return self.net(z)
