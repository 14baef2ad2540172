"""DCGAN-style decoders mirroring :class:`~mmssl.nn.encoders.DCGANEncoder`.

Fedorov et al., arXiv 2012.13623, §3 (fusion-spec §3.3), after Radford et al. (ICLR 2016): a
4×4 transposed convolution lifts z to a 4×4(×4) map with 2^(n−1)·width channels, then stride-2
4×4 transposed convolutions double the side and halve the channels until the input side, with
BatchNorm and LeakyReLU(0.2) between; the last layer has no normalisation. The output is a
sigmoid (for reconstruction losses on [0, 1] data) or the raw mean (for likelihood models).
The reference used LeakyReLU(0.01) in the decoder by accident; we use the encoder's 0.2.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from mmssl.nn.encoders import LEAKY_SLOPE, batch_norm, n_downsampling_blocks


def conv_transpose_layer(spatial_dims: int) -> type[nn.ConvTranspose2d] | type[nn.ConvTranspose3d]:
    """The transposed convolution class for 2-D or 3-D outputs."""
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3; got {spatial_dims}")
    return nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d


class DCGANDecoder(nn.Module):
    """Decode z (B, latent) into (B, out_channels, *spatial).

    Args:
        out_channels: channels of the reconstruction.
        output_size: spatial side (power of two ≥ 8; 32 or 64 in the paper).
        spatial_dims: 2 or 3.
        width: the encoder's width (its block 0 channels).
        latent_dim: size of z.
        output: ``"sigmoid"`` for [0, 1] reconstructions, ``"linear"`` for raw means.
    """

    def __init__(
        self,
        out_channels: int = 1,
        output_size: int = 32,
        spatial_dims: int = 2,
        width: int = 32,
        latent_dim: int = 64,
        output: Literal["sigmoid", "linear"] = "sigmoid",
    ) -> None:
        super().__init__()
        if output not in ("sigmoid", "linear"):
            raise ValueError(f"output must be 'sigmoid' or 'linear'; got {output!r}")
        deconv = conv_transpose_layer(spatial_dims)
        norm = batch_norm(spatial_dims)
        n_blocks = n_downsampling_blocks(output_size)
        self.spatial_dims = spatial_dims
        self.latent_dim = latent_dim
        channels = width * 2 ** (n_blocks - 1)
        layers: list[nn.Module] = [
            deconv(latent_dim, channels, 4, stride=1, padding=0, bias=False),
            norm(channels),
            nn.LeakyReLU(LEAKY_SLOPE),
        ]
        for _ in range(n_blocks - 1):
            layers += [
                deconv(channels, channels // 2, 4, stride=2, padding=1, bias=False),
                norm(channels // 2),
                nn.LeakyReLU(LEAKY_SLOPE),
            ]
            channels //= 2
        layers.append(deconv(channels, out_channels, 4, stride=2, padding=1, bias=True))
        if output == "sigmoid":
            layers.append(nn.Sigmoid())
        self.net = nn.Sequential(*layers)
        gain = nn.init.calculate_gain("leaky_relu", LEAKY_SLOPE)
        for module in self.net:
            if isinstance(module, nn.ConvTranspose2d | nn.ConvTranspose3d):
                nn.init.xavier_uniform_(module.weight, gain=gain)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, z: Tensor) -> Tensor:
        """(B, latent) → reconstruction (B, C, *spatial)."""
        return self.net(z.reshape(z.shape[0], self.latent_dim, *([1] * self.spatial_dims)))

