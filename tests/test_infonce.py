"""InfoNCE estimator: golden values of the reference (fusion-spec §2.7) and an explicit oracle."""

from __future__ import annotations

import math

import pytest
import torch

from mmssl.objectives.infonce import critic_scores, infonce, infonce_with_masks


def loop_oracle(anchors, candidates, *, clip, penalty_weight, scale):
    """ℓ(i,a,b) = −s_iiab + log(e^{s_iiab} + Σ_{j≠i,a',b'} e^{s_ija'b'}), by explicit loops."""
    batch, _, n_cand = candidates.shape
    n_anchor = anchors.shape[2]
    raw = torch.zeros(batch, batch, n_cand, n_anchor, dtype=torch.float64)
    for i in range(batch):
        for j in range(batch):
            for a in range(n_cand):
                for b in range(n_anchor):
                    dot = anchors[i, :, b].double() @ candidates[j, :, a].double()
                    raw[i, j, a, b] = dot * scale
    penalty = penalty_weight * (raw**2).mean()
    s = clip * torch.tanh(raw / clip)
    terms = []
    for i in range(batch):
        negatives = [s[i, j, a, b] for j in range(batch) if j != i
                     for a in range(n_cand) for b in range(n_anchor)]
        neg_sum = sum(math.exp(v) for v in negatives)
        for a in range(n_cand):
            for b in range(n_anchor):
                pos = s[i, i, a, b].item()
                terms.append(-pos + math.log(math.exp(pos) + neg_sum))
    return sum(terms) / len(terms), penalty.item()


def test_golden_values_of_the_reference():
    torch.manual_seed(42)
    x = torch.rand(8, 64, 32)
    y = torch.rand(8, 64, 1)
    result = infonce(y, x, critic="dot", clip=10.0, penalty_weight=0.04)
    assert result.loss.item() == pytest.approx(5.4309, abs=1e-4)
    assert result.penalty.item() == pytest.approx(10.2132, abs=1e-4)


def test_critic_golden_values():
    torch.manual_seed(42)
    u, v = torch.rand(2, 32), torch.rand(2, 32)
    # Row-wise pairs, as in the reference critic tests.
    scaled = critic_scores(u[:, :, None], v[:, :, None], "scaled_dot")
    cosine = critic_scores(u[:, :, None], v[:, :, None], "cosine")
    assert scaled[..., 0, 0].sum().item() == pytest.approx(4.8168, abs=1e-4)
    assert cosine[..., 0, 0].sum().item() == pytest.approx(2.8963, abs=1e-4)


@pytest.mark.parametrize("n_anchor", [1, 3])
def test_matches_loop_oracle(n_anchor):
    torch.manual_seed(0)
    anchors = torch.randn(5, 8, n_anchor)
    candidates = torch.randn(5, 8, 6)
    result = infonce(anchors, candidates, critic="scaled_dot", clip=20.0, penalty_weight=0.04)
    loss, penalty = loop_oracle(anchors, candidates, clip=20.0, penalty_weight=0.04,
                                scale=1 / math.sqrt(8))
    assert result.loss.item() == pytest.approx(loss, rel=1e-5)
    assert result.penalty.item() == pytest.approx(penalty, rel=1e-5)


def test_mask_based_implementation_agrees():
    torch.manual_seed(1)
    anchors = torch.randn(16, 64, 1)
    candidates = torch.randn(16, 64, 64)
    fast = infonce(anchors, candidates)
    slow = infonce_with_masks(anchors, candidates)
    assert fast.loss.item() == pytest.approx(slow.loss.item(), rel=1e-5)
    assert fast.penalty.item() == pytest.approx(slow.penalty.item(), rel=1e-6)


def test_symmetric_for_one_location_each():
    """With one location each, swapping roles transposes the score matrix: for a symmetric
    score matrix (anchors == candidates) the loss is the same both ways; penalties always are."""
    torch.manual_seed(2)
    a = torch.randn(10, 16, 1)
    b = torch.randn(10, 16, 1)
    ab, ba = infonce(a, b), infonce(b, a)
    assert ab.penalty.item() == pytest.approx(ba.penalty.item())
    same1, same2 = infonce(a, a.clone()), infonce(a.clone(), a)
    assert same1.loss.item() == pytest.approx(same2.loss.item())


def test_aligned_pairs_beat_shuffled_pairs():
    torch.manual_seed(3)
    z = torch.randn(32, 16, 1)
    aligned = infonce(z, z + 0.01 * torch.randn_like(z)).loss
    shuffled = infonce(z, z[torch.randperm(32)]).loss
    assert aligned < shuffled
    assert aligned < math.log(32)  # better than chance (log of the number of candidates)


def test_no_clip_and_no_penalty():
    torch.manual_seed(4)
    a, c = torch.randn(4, 8, 1), torch.randn(4, 8, 5)
    result = infonce(a, c, clip=None, penalty_weight=0.0)
    loss, _ = loop_oracle(a, c, clip=1e9, penalty_weight=0.0, scale=1 / math.sqrt(8))
    assert result.penalty.item() == 0.0
    assert result.loss.item() == pytest.approx(loss, rel=1e-5)


def test_memory_is_linear_in_locations():
    """The fast estimator's autograd graph holds no B×B×L masks: saved tensors grow like the
    score tensor (linearly in L) and stay well below the mask-based version."""
    def saved_bytes(fn, n_loc):
        anchors = torch.randn(32, 64, 1, requires_grad=True)
        candidates = torch.randn(32, 64, n_loc, requires_grad=True)
        total = 0
        def pack(t):
            nonlocal total
            total += t.numel() * t.element_size()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn(anchors, candidates).loss.backward()
        return total
    small, large = saved_bytes(infonce, 64), saved_bytes(infonce, 512)
    assert large / small < 8 * 1.1  # linear in locations
    assert saved_bytes(infonce_with_masks, 512) > 1.3 * large  # the masks it keeps


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="batch size and channel"):
        infonce(torch.randn(4, 8, 1), torch.randn(4, 7, 3))
    with pytest.raises(ValueError, match="at least 2 samples"):
        infonce(torch.randn(1, 8, 1), torch.randn(1, 8, 3))
    with pytest.raises(ValueError, match="unknown critic"):
        infonce(torch.randn(4, 8, 1), torch.randn(4, 8, 3), critic="bilinear")  # type: ignore[arg-type]
