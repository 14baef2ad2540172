"""Taxonomy terms: reference golden values, naming, weights, gradient flow and validation."""

from __future__ import annotations

import pytest
import torch

from mmssl.nn import DCGANEncoder, GlobalHead, LocalHead
from mmssl.objectives.taxonomy import (
    EstimatorSettings,
    Objective,
    ObjectiveError,
    all_objectives,
    sample_locations,
    taxonomy_loss,
)

GOLDEN_ESTIMATOR = EstimatorSettings(critic="dot", clip=10.0, penalty_weight=0.04)


@pytest.fixture
def reference_fixture():
    """The reference's mode fixture: per source a conv map, a sampled location, a global rep."""
    torch.manual_seed(42)
    data = {}
    for source in "01":
        data[f"conv{source}"] = torch.rand(8, 64, 32)
        data[f"loc{source}"] = torch.rand(8, 64, 1)
        data[f"rep{source}"] = torch.rand(8, 64, 1)
    local = {s: {"32_0": data[f"conv{s}"]} for s in "01"}
    global_ = {s: data[f"rep{s}"][:, :, 0] for s in "01"}
    return data, local, global_


@pytest.mark.parametrize(
    ("mode", "expected", "total"),
    [
        ("CR", {"CR/32_0/0": (5.4389, 10.7434), "CR/32_0/1": (5.4361, 10.4492)}, 32.0676),
        ("XX", {"XX/32_0/0:1": (5.4481, 10.7993), "XX/32_0/1:0": (5.4465, 10.3911)}, 32.0850),
        ("RR", {"RR/0:1": (2.0887, 10.9743), "RR/1:0": (2.0777, 10.9743)}, 26.1152),
    ],
)
def test_reference_golden_values(reference_fixture, mode, expected, total):
    _, local, global_ = reference_fixture
    out = taxonomy_loss(local, global_, Objective((mode,)), estimator=GOLDEN_ESTIMATOR)
    assert set(out.terms) == set(expected) | {f"{k}/penalty" for k in expected}
    for name, (loss, penalty) in expected.items():
        assert out.terms[name].item() == pytest.approx(loss, abs=2e-4)
        assert out.terms[f"{name}/penalty"].item() == pytest.approx(penalty, abs=2e-4)
    assert out.total.item() == pytest.approx(total, abs=5e-4)


def test_cc_golden_values_with_the_reference_sampled_locations(reference_fixture):
    # CC's anchor is one random location; the reference fixture fixes it explicitly.
    data, _, _ = reference_fixture
    cc01 = GOLDEN_ESTIMATOR(data["loc0"], data["conv1"])
    cc10 = GOLDEN_ESTIMATOR(data["loc1"], data["conv0"])
    assert (cc01.loss.item(), cc01.penalty.item()) == pytest.approx((5.4396, 10.2893), abs=1e-4)
    assert (cc10.loss.item(), cc10.penalty.item()) == pytest.approx((5.4479, 10.3638), abs=1e-4)
    assert sum(v.item() for v in (*cc01.__dict__.values(), *cc10.__dict__.values())) == \
        pytest.approx(31.5406, abs=5e-4)


def test_cc_uses_one_sampled_location_against_all_locations(reference_fixture):
    _, local, global_ = reference_fixture
    generator = torch.Generator().manual_seed(7)
    out = taxonomy_loss(local, global_, Objective(("CC",)), estimator=GOLDEN_ESTIMATOR,
                        generator=generator)
    replay = torch.Generator().manual_seed(7)
    anchor0 = sample_locations(local["0"]["32_0"], replay)
    anchor1 = sample_locations(local["1"]["32_0"], replay)
    assert out.terms["CC/32_0/0:1"].item() == pytest.approx(
        GOLDEN_ESTIMATOR(anchor0, local["1"]["32_0"]).loss.item())
    assert out.terms["CC/32_0/1:0"].item() == pytest.approx(
        GOLDEN_ESTIMATOR(anchor1, local["0"]["32_0"]).loss.item())


def test_sample_locations_picks_one_real_location_per_sample():
    features = torch.arange(4 * 3 * 10, dtype=torch.float32).view(4, 3, 10)
    picked = sample_locations(features, torch.Generator().manual_seed(0))
    assert picked.shape == (4, 3, 1)
    for b in range(4):
        column = picked[b, :, 0]
        matches = [loc for loc in range(10) if torch.equal(features[b, :, loc], column)]
        assert len(matches) == 1
    again = sample_locations(features, torch.Generator().manual_seed(0))
    assert torch.equal(picked, again)


def test_all_fifteen_objectives_and_canonical_names():
    names = all_objectives()
    assert len(names) == 15 and len(set(names)) == 15
    assert names[0] == "CR" and names[-1] == "CR-XX-CC-RR"
    assert Objective.parse("rr-cc-xx-cr").name == "CR-XX-CC-RR"
    assert Objective.parse("XX+CR").name == "CR-XX"
    with pytest.raises(ObjectiveError, match="valid modes: CR, XX, CC, RR"):
        Objective.parse("CR-XY")
    with pytest.raises(ObjectiveError, match="repeated"):
        Objective.parse("CR-CR")
    with pytest.raises(ObjectiveError, match="at least one mode"):
        Objective.parse("")


def test_weights_are_applied_once(reference_fixture):
    _, local, global_ = reference_fixture
    objective = Objective(("CR", "XX"))
    base = taxonomy_loss(local, global_, objective, estimator=GOLDEN_ESTIMATOR)
    weighted = taxonomy_loss(local, global_, objective, estimator=GOLDEN_ESTIMATOR,
                             weights={"XX": 3.0})
    xx = sum(v for k, v in base.terms.items() if k.startswith("XX") and "penalty" not in k)
    assert weighted.total.item() == pytest.approx(base.total.item() + 2.0 * xx.item(), rel=1e-6)
    with_penalty = taxonomy_loss(local, global_, objective, estimator=GOLDEN_ESTIMATOR,
                                 weights={"XX": 3.0}, weight_penalty=True)
    xx_pen = sum(v for k, v in base.terms.items() if k.startswith("XX") and "penalty" in k)
    assert with_penalty.total.item() == pytest.approx(
        weighted.total.item() + 2.0 * xx_pen.item(), rel=1e-6)
    with pytest.raises(ObjectiveError, match="not in objective CR-XX"):
        taxonomy_loss(local, global_, objective, weights={"RR": 1.0})


def test_total_is_the_sum_of_terms_for_every_objective(reference_fixture):
    _, local, global_ = reference_fixture
    for name in all_objectives():
        out = taxonomy_loss(local, global_, Objective.parse(name), estimator=GOLDEN_ESTIMATOR,
                            generator=torch.Generator().manual_seed(0))
        assert out.total.item() == pytest.approx(sum(v.item() for v in out.terms.values()),
                                                 rel=1e-6)
        assert {k.split("/")[0] for k in out.terms} == set(name.split("-"))


def test_three_modalities_use_all_ordered_pairs():
    torch.manual_seed(0)
    mods = ["a", "b", "c"]
    local = {m: {"l": torch.randn(4, 8, 5)} for m in mods}
    global_ = {m: torch.randn(4, 8) for m in mods}
    out = taxonomy_loss(local, global_, Objective.parse("XX-CC-RR"),
                        generator=torch.Generator().manual_seed(0))
    for mode in ("XX", "CC"):
        assert len([k for k in out.terms if k.startswith(mode) and "penalty" not in k]) == 6
    assert len([k for k in out.terms if k.startswith("RR") and "penalty" not in k]) == 6


def test_cross_modal_modes_need_two_modalities():
    local = {"a": {"l": torch.randn(4, 8, 5)}}
    global_ = {"a": torch.randn(4, 8)}
    assert taxonomy_loss(local, global_, Objective(("CR",))).total.isfinite()
    for mode in ("XX", "CC", "RR"):
        with pytest.raises(ObjectiveError, match="at least two modalities"):
            taxonomy_loss(local, global_, Objective(("CR", mode)))


class TwoEncoders(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.ModuleDict({m: DCGANEncoder(taps=["block1"]) for m in ("a", "b")})
        self.local = torch.nn.ModuleDict({m: LocalHead(64) for m in ("a", "b")})
        self.glob = torch.nn.ModuleDict({m: GlobalHead() for m in ("a", "b")})

    def loss(self, objective: str, x):
        local, global_ = {}, {}
        for m in ("a", "b"):
            out = self.enc[m](x[m])
            local[m] = {"block1": self.local[m](out.local["block1"])}
            global_[m] = self.glob[m](out.z)
        return taxonomy_loss(local, global_, Objective.parse(objective),
                             generator=torch.Generator().manual_seed(0))


def _grad_norms(model, terms):
    grads = {}
    for name, value in terms.items():
        if name.endswith("penalty"):
            continue
        model.zero_grad()
        value.backward(retain_graph=True)
        grads[name] = {m: sum(p.grad.abs().sum().item() for p in model.enc[m].parameters()
                              if p.grad is not None) for m in ("a", "b")}
    return grads


def test_gradient_flow_cross_modal_reaches_both_cr_never_crosses():
    torch.manual_seed(0)
    model = TwoEncoders()
    x = {m: torch.rand(6, 1, 32, 32) for m in ("a", "b")}
    out = model.loss("CR-XX-CC-RR", x)
    grads = _grad_norms(model, out.terms)
    for name, per_encoder in grads.items():
        if name.startswith("CR"):
            own = name.rsplit("/", 1)[1]
            other = "b" if own == "a" else "a"
            assert per_encoder[own] > 0 and per_encoder[other] == 0, name
        else:
            assert per_encoder["a"] > 0 and per_encoder["b"] > 0, name


def test_terms_that_share_candidates_are_computed_together(monkeypatch, reference_fixture):
    """CR, XX and CC of CR-XX-CC-RR all read each modality's local map: the lean estimator
    computes them in one call per map (RR's candidates are the globals, one call each), and
    the total and every gradient equal those of the terms computed one by one."""
    import mmssl.objectives.taxonomy as taxonomy

    _, local, global_ = reference_fixture
    local = {m: {k: v.clone().requires_grad_() for k, v in layers.items()}
             for m, layers in local.items()}
    global_ = {m: v.clone().requires_grad_() for m, v in global_.items()}
    calls: list[int] = []
    real = taxonomy.infonce_shared

    def counting(anchor_sets, candidates, **kwargs):
        calls.append(len(anchor_sets))
        return real(anchor_sets, candidates, **kwargs)

    monkeypatch.setattr(taxonomy, "infonce_shared", counting)
    objective = Objective.parse("CR-XX-CC-RR")
    inputs = [*(v for layers in local.values() for v in layers.values()), *global_.values()]
    together = taxonomy_loss(local, global_, objective, generator=torch.Generator().manual_seed(3))
    assert calls == [3, 3]
    apart = taxonomy_loss(local, global_, objective,
                          estimator=EstimatorSettings(share_candidates=False),
                          generator=torch.Generator().manual_seed(3))
    assert calls == [3, 3]
    assert list(together.terms) == list(apart.terms)
    for name in together.terms:
        assert together.terms[name].item() == pytest.approx(apart.terms[name].item(), rel=1e-5)
    got = torch.autograd.grad(together.total, inputs)
    want = torch.autograd.grad(apart.total, inputs)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_masked_terms_are_not_shared(monkeypatch, reference_fixture):
    """With presence masks every term runs on its own valid samples: nothing is shared."""
    import mmssl.objectives.taxonomy as taxonomy

    _, local, global_ = reference_fixture
    calls: list[int] = []
    monkeypatch.setattr(taxonomy, "infonce_shared",
                        lambda *a, **k: calls.append(1))  # would break the loss if called
    present = {"0": torch.tensor([True] * 7 + [False]), "1": torch.ones(8, dtype=torch.bool)}
    out = taxonomy_loss(local, global_, Objective.parse("CR-XX"), present=present)
    assert calls == [] and torch.isfinite(out.total)
