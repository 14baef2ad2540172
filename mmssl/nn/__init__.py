"""Encoders (DCGAN with named local taps; a PCA-stem linear encoder) and projection heads."""

from mmssl.nn.decoders import DCGANDecoder
from mmssl.nn.encoders import DCGANEncoder, EncoderOutput, default_local_tap
from mmssl.nn.heads import GlobalHead, LocalHead
from mmssl.nn.pca_encoder import PCAEncoder, StemNotFitted

__all__ = [
    "DCGANDecoder", "DCGANEncoder", "EncoderOutput", "GlobalHead", "LocalHead",
    "PCAEncoder", "StemNotFitted", "default_local_tap",
]
