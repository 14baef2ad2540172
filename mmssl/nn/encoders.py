"""DCGAN-style convolutional encoders with named local taps.

Fedorov et al., arXiv 2012.13623, §3 (after Radford et al., ICLR 2016): stride-2 4×4
convolutions halve the side until it is 4, then a 4×4 valid convolution gives the 1×1(×1)
global output z ∈ R^latent. Block 0 has no normalisation; the others use BatchNorm; all
activations are LeakyReLU(0.2) except after the last block (z is the raw conv output, the
downstream representation).

A *local tap* ``blockK`` is the raw convolution output of block K, before its normalisation and
activation (the reference's "C"). For 32×32 inputs ``block1`` is the 8×8 map; for 64³ inputs
``block2`` is the 8³ map (:func:`default_local_tap`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

LEAKY_SLOPE = 0.2


@dataclass
class EncoderOutput:
    """z: (B, latent) global output; local: tap name → raw conv map (B, C, *spatial)."""

    z: Tensor
    local: dict[str, Tensor] = field(default_factory=dict)


def conv_layer(spatial_dims: int) -> type[nn.Conv2d] | type[nn.Conv3d]:
    """The convolution class for 2-D or 3-D inputs."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3; got {spatial_dims}")
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def batch_norm(spatial_dims: int) -> type[nn.BatchNorm2d] | type[nn.BatchNorm3d]:
    """The BatchNorm class for 2-D or 3-D feature maps."""
    return nn.BatchNorm2d if spatial_dims == 2 else nn.BatchNorm3d


def n_downsampling_blocks(input_size: int) -> int:
    """Number of stride-2 blocks that bring ``input_size`` down to 4 (32 → 3, 64 → 4)."""
    steps = math.log2(input_size) - 2 if input_size > 0 else -1
    if input_size < 8 or steps != int(steps):
        raise ValueError(
            f"DCGAN encoders need a power-of-two input side ≥ 8 (32 for MNIST, 64 for volumes); "
            f"got {input_size}"
        )
    return int(steps)


def default_local_tap(input_size: int) -> str:
    """The block whose map has side 8, the paper's choice (``block1`` at 32, ``block2`` at 64)."""
    blocks = n_downsampling_blocks(input_size)
    for index in range(blocks):
        if input_size // 2 ** (index + 1) == 8:
            return f"block{index}"
    return f"block{blocks - 1}"


class DCGANEncoder(nn.Module):
    """DCGAN encoder for 2-D or 3-D inputs with named local taps.

    Args:
        in_channels: input channels (1 for MNIST, T1, fALFF; 3 for SVHN).
        input_size: spatial side (a power of two ≥ 8; 32 and 64 in the paper).
        spatial_dims: 2 for images, 3 for volumes.
        width: channels of block 0, doubled at each block (32 in the paper).
        latent_dim: size of z (64 in the paper).
        taps: names of the blocks whose raw conv output is returned in ``local``.

    Parameters: 295,808 for 1×32×32 and 3,804,032 for 1×64³ at the defaults.
    """

    def __init__(
        self,
        in_channels: int = 1,
        input_size: int = 32,
        spatial_dims: int = 2,
        width: int = 32,
        latent_dim: int = 64,
        taps: Sequence[str] = (),
    ) -> None:
        super().__init__()
        conv = conv_layer(spatial_dims)
        norm = batch_norm(spatial_dims)
        n_blocks = n_downsampling_blocks(input_size)
        self.spatial_dims = spatial_dims
        self.input_size = input_size
        self.in_channels = in_channels
        self.latent_dim = latent_dim
        self.convs = nn.ModuleList()
        self.post = nn.ModuleList()
        channels_in = in_channels
        self.channels: dict[str, int] = {}
        self.sides: dict[str, int] = {}
        for index in range(n_blocks):
            channels_out = width * 2**index
            self.convs.append(conv(channels_in, channels_out, 4, stride=2, padding=1, bias=False))
            layers: list[nn.Module] = [] if index == 0 else [norm(channels_out)]
            # In place (one activation-sized buffer fewer per block) except where the input is a
            # tapped conv output, which the local features must keep unchanged.
            layers.append(nn.LeakyReLU(LEAKY_SLOPE, inplace=index > 0 or "block0" not in taps))
            self.post.append(nn.Sequential(*layers))
            self.channels[f"block{index}"] = channels_out
            self.sides[f"block{index}"] = input_size // 2 ** (index + 1)
            channels_in = channels_out
        self.final = conv(channels_in, latent_dim, 4, stride=1, padding=0, bias=False)
        unknown = [t for t in taps if t not in self.channels]
        if unknown:
            raise ValueError(
                f"unknown local tap(s) {unknown} for a {input_size}-side encoder; valid taps: "
                + ", ".join(f"{k} ({self.sides[k]}^{spatial_dims} map)" for k in self.channels)
            )
        self.taps = tuple(taps)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform convolutions with the LeakyReLU(0.2) gain; BN weight 1, bias 0."""
        gain = nn.init.calculate_gain("leaky_relu", LEAKY_SLOPE)
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Conv3d):
                nn.init.xavier_uniform_(module.weight, gain=gain)
            elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> EncoderOutput:
        """Encode (B, C, *spatial) into z (B, latent) and the requested local taps."""
        expected = (self.in_channels,) + (self.input_size,) * self.spatial_dims
        if tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"encoder expects inputs of shape (B, {expected}); got {tuple(x.shape)}"
            )
        local: dict[str, Tensor] = {}
        for index, (conv, post) in enumerate(zip(self.convs, self.post, strict=True)):
            x = conv(x)
            name = f"block{index}"
            if name in self.taps:
                local[name] = x
            x = post(x)
        z = torch.flatten(self.final(x), 1)
        return EncoderOutput(z=z, local=local)
