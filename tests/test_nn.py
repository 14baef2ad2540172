"""Encoders and heads: shapes, named taps, parameter counts of the paper's architecture."""

from __future__ import annotations

import pytest
import torch

from mmssl.nn import DCGANEncoder, GlobalHead, LocalHead, default_local_tap


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_2d_encoder_matches_the_paper():
    encoder = DCGANEncoder(1, 32, 2, taps=["block1"])
    assert n_params(encoder) == 295_808  # fusion-spec §3.2
    assert n_params(DCGANEncoder(3, 32, 2)) == 296_832
    out = encoder(torch.rand(5, 1, 32, 32))
    assert out.z.shape == (5, 64)
    assert out.local["block1"].shape == (5, 64, 8, 8)


def test_3d_encoder_matches_the_paper():
    encoder = DCGANEncoder(1, 64, 3, taps=["block2"])
    assert n_params(encoder) == 3_804_032
    out = encoder(torch.rand(2, 1, 64, 64, 64))
    assert out.z.shape == (2, 64)
    assert out.local["block2"].shape == (2, 128, 8, 8, 8)


def test_default_taps_are_the_8_map():
    assert default_local_tap(32) == "block1"
    assert default_local_tap(64) == "block2"


def test_tap_is_the_pre_normalisation_conv_output():
    encoder = DCGANEncoder(1, 32, 2, taps=["block1"]).eval()
    x = torch.rand(3, 1, 32, 32)
    out = encoder(x)
    expected = encoder.convs[1](encoder.post[0](encoder.convs[0](x)))
    assert torch.allclose(out.local["block1"], expected)
    # z is the raw final conv output: no activation, so it takes negative values.
    assert (out.z < 0).any()


def test_bad_tap_and_input_size_errors():
    with pytest.raises(ValueError, match="valid taps: block0"):
        DCGANEncoder(1, 32, 2, taps=["block7"])
    with pytest.raises(ValueError, match="power-of-two"):
        DCGANEncoder(1, 28, 2)
    with pytest.raises(ValueError, match="expects inputs of shape"):
        DCGANEncoder(1, 32, 2)(torch.rand(2, 1, 28, 28))


def test_heads_parameter_counts_and_shapes():
    local = LocalHead(64, 64, 64)
    assert n_params(local) == 12_544  # fusion-spec §3.6
    assert local(torch.rand(4, 64, 8, 8)).shape == (4, 64, 64)
    assert n_params(GlobalHead()) == 8_320  # fusion-spec §3.7
    assert GlobalHead()(torch.rand(4, 64)).shape == (4, 64)
    head3d = LocalHead(128, 64, 64, spatial_dims=3)
    assert head3d(torch.rand(2, 128, 8, 8, 8)).shape == (2, 64, 512)


def test_local_head_shortcut_is_near_identity_when_widening():
    head = LocalHead(32, 64)
    weight = head.shortcut.weight.view(64, 32)
    assert torch.allclose(weight[:32], torch.eye(32), atol=0.011)


def test_in_place_activations_never_touch_a_tapped_conv_output():
    """Activations run in place to save memory, except on a tapped block-0 conv output: the
    local features stay the raw conv output (negative values included) in every case."""
    torch.manual_seed(3)
    x = torch.randn(4, 1, 32, 32)
    for taps in (("block0",), ("block1",), ("block0", "block1")):
        encoder = DCGANEncoder(taps=taps).train()
        out = encoder(x)
        for tap in taps:
            index = int(tap.removeprefix("block"))
            h = x
            for conv, post in zip(encoder.convs[:index], encoder.post[:index], strict=True):
                h = post(conv(h))
            expected = encoder.convs[index](h)
            torch.testing.assert_close(out.local[tap], expected)
            assert (out.local[tap] < 0).any()
