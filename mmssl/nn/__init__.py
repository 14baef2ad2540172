"""Encoders with named local taps and the objectives' projection heads."""

from mmssl.nn.decoders import DCGANDecoder
from mmssl.nn.encoders import DCGANEncoder, EncoderOutput, default_local_tap
from mmssl.nn.heads import GlobalHead, LocalHead

__all__ = [
    "DCGANDecoder", "DCGANEncoder", "EncoderOutput", "GlobalHead", "LocalHead",
    "default_local_tap",
]
