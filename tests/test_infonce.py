"""InfoNCE estimator: golden values of the reference (fusion-spec §2.7), explicit oracles, and
the lean (chunked, recomputing) estimator against the dense one."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mmssl.objectives.infonce import (
    CHUNK_ELEMENTS,
    DIRECT_ELEMENTS,
    _dense_infonce,
    _lean_infonce,
    auto_chunk_size,
    critic_scores,
    infonce,
    infonce_dense,
    infonce_shared,
    infonce_with_masks,
)

ESTIMATORS = ["lean", "dense"]


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


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_golden_values_of_the_reference(estimator):
    torch.manual_seed(42)
    x = torch.rand(8, 64, 32)
    y = torch.rand(8, 64, 1)
    result = infonce(y, x, critic="dot", clip=10.0, penalty_weight=0.04, estimator=estimator,
                     chunk_size=3)
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


@pytest.mark.parametrize(("n_anchor", "estimator"), list(itertools.product([1, 3], ESTIMATORS)))
def test_matches_loop_oracle(n_anchor, estimator):
    torch.manual_seed(0)
    anchors = torch.randn(5, 8, n_anchor)
    candidates = torch.randn(5, 8, 6)
    result = infonce(anchors, candidates, critic="scaled_dot", clip=20.0, penalty_weight=0.04,
                     estimator=estimator, chunk_size=2)
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


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_no_clip_and_no_penalty(estimator):
    torch.manual_seed(4)
    a, c = torch.randn(4, 8, 1), torch.randn(4, 8, 5)
    result = infonce(a, c, clip=None, penalty_weight=0.0, estimator=estimator, chunk_size=3)
    loss, _ = loop_oracle(a, c, clip=1e9, penalty_weight=0.0, scale=1 / math.sqrt(8))
    assert result.penalty.item() == 0.0
    assert result.loss.item() == pytest.approx(loss, rel=1e-5)


def saved_tensor_sizes(fn, anchors, candidates):
    """numel of every tensor the autograd graph of fn(...).loss + penalty saves for backward."""
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn(anchors, candidates)
        (result.loss + result.penalty).backward()
    return sizes


def test_memory_is_linear_in_locations():
    """Neither estimator's autograd graph holds B×B×L masks: saved tensors grow linearly in L
    and stay well below the mask-based version."""
    def saved_bytes(fn, n_loc):
        anchors = torch.randn(32, 64, 1, requires_grad=True)
        candidates = torch.randn(32, 64, n_loc, requires_grad=True)
        return 4 * sum(saved_tensor_sizes(fn, anchors, candidates))
    for fn in (infonce, infonce_dense):
        small, large = saved_bytes(fn, 64), saved_bytes(fn, 512)
        assert large / small < 8 * 1.1  # linear in locations
        assert saved_bytes(infonce_with_masks, 512) > 1.3 * large  # the masks it keeps


def test_lean_saves_no_score_sized_tensor():
    """At L = 512 the lean estimator saves only its inputs and B×B-sized tensors, while the
    dense one saves several B·B·L_x·L_y score tensors (which shows the hook sees them). (The
    scores are above DIRECT_ELEMENTS, so lean chunks them.)"""
    torch.manual_seed(5)
    batch, channels, n_loc = 32, 4, 512
    anchors = torch.randn(batch, channels, 1, requires_grad=True)
    candidates = torch.randn(batch, channels, n_loc, requires_grad=True)
    score_numel = batch * batch * n_loc
    assert score_numel > DIRECT_ELEMENTS
    lean = saved_tensor_sizes(infonce, anchors, candidates)
    dense = saved_tensor_sizes(infonce_dense, anchors, candidates)
    assert max(lean) <= max(candidates.numel(), batch * batch)
    assert max(lean) <= score_numel // 4
    assert candidates.numel() in lean  # the Function's own saves went through the hook
    assert sum(n >= score_numel for n in dense) >= 2


def allocation_peak_bytes(fn, anchors, candidates):
    """Peak of live CPU bytes over fwd+bwd, replaying the profiler's allocation events."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        result = fn(anchors, candidates)
        (result.loss + result.penalty).backward()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def test_lean_peak_memory_is_a_fraction_of_dense():
    """Forward + backward peak, counted allocation by allocation (deterministic): the dense
    estimator holds several score tensors at once, the lean one about one chunk's worth, and
    its peak shrinks with the chunk."""
    torch.manual_seed(6)
    batch, channels, n_loc = 32, 8, 512  # one score tensor: 2 MiB
    anchors = torch.randn(batch, channels, 1, requires_grad=True)
    candidates = torch.randn(batch, channels, n_loc, requires_grad=True)
    dense = allocation_peak_bytes(infonce_dense, anchors, candidates)
    quarters = allocation_peak_bytes(lambda a, c: infonce(a, c, chunk_size=8),
                                     anchors, candidates)
    small_chunks = allocation_peak_bytes(lambda a, c: infonce(a, c, chunk_size=2),
                                         anchors, candidates)
    score_bytes = 4 * batch * batch * n_loc
    assert dense > 4 * score_bytes
    assert quarters < dense / 3
    # 2 samples per chunk: 128 KiB of scores; the peak is then the candidates' gradient
    # (0.5 MiB) and a few chunk buffers, about half of ONE full score tensor.
    assert small_chunks < quarters / 1.5
    assert small_chunks < 0.6 * score_bytes


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_rejects_bad_shapes(estimator):
    with pytest.raises(ValueError, match="batch size and channel"):
        infonce(torch.randn(4, 8, 1), torch.randn(4, 7, 3), estimator=estimator)
    with pytest.raises(ValueError, match="batch size and channel"):
        infonce(torch.randn(4, 8, 1), torch.randn(5, 8, 3), estimator=estimator)
    with pytest.raises(ValueError, match="at least 2 samples"):
        infonce(torch.randn(1, 8, 1), torch.randn(1, 8, 3), estimator=estimator)
    with pytest.raises(ValueError, match="unknown critic"):
        infonce(torch.randn(4, 8, 1), torch.randn(4, 8, 3), critic="bilinear",  # type: ignore[arg-type]
                estimator=estimator)
    with pytest.raises(ValueError, match="clip must be positive"):
        infonce(torch.randn(4, 8, 1), torch.randn(4, 8, 3), clip=0.0, estimator=estimator)


@pytest.mark.parametrize("chunk_size", [0, -2, 2.5, True, "4"])
def test_rejects_bad_chunk_size(chunk_size):
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        infonce(torch.randn(4, 8, 1), torch.randn(4, 8, 3), chunk_size=chunk_size)


def test_rejects_unknown_estimator():
    with pytest.raises(ValueError, match="unknown estimator 'sparse'"):
        infonce(torch.randn(4, 8, 1), torch.randn(4, 8, 3), estimator="sparse")  # type: ignore[arg-type]


# ---- lean versus dense ----------------------------------------------------------------------

def loss_and_grads(fn, anchors, candidates):
    anchors = anchors.detach().requires_grad_()
    candidates = candidates.detach().requires_grad_()
    result = fn(anchors, candidates)
    grads = torch.autograd.grad(result.loss + 3.0 * result.penalty, (anchors, candidates))
    return result.loss.item(), result.penalty.item(), grads


def assert_same(lean, dense):
    (l_loss, l_pen, l_grads), (d_loss, d_pen, d_grads) = lean, dense
    assert l_loss == pytest.approx(d_loss, rel=1e-5)
    assert l_pen == pytest.approx(d_pen, rel=1e-5, abs=1e-12)
    for got, want in zip(l_grads, d_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("critic", "clip", "n_anchor"),
    list(itertools.product(["scaled_dot", "dot", "cosine"], [20.0, 1.0, None, 500.0], [1, 3])),
)
def test_lean_equals_dense_and_masks(critic, clip, n_anchor):
    """Loss, penalty and gradients agree for every critic, clip (500 takes the shifted
    log-sum-exp), L_y, penalty on/off and chunk sizes that do and do not divide B."""
    torch.manual_seed(7)
    batch = 7
    anchors = 2.0 * torch.randn(batch, 8, n_anchor)
    candidates = 2.0 * torch.randn(batch, 8, 5)
    for penalty_weight in (0.04, 0.0):
        settings = dict(critic=critic, clip=clip, penalty_weight=penalty_weight,
                        temperature=0.3)
        dense = loss_and_grads(lambda a, c, s=settings: infonce_dense(a, c, **s),
                               anchors, candidates)
        masks = infonce_with_masks(anchors, candidates, **settings)
        assert dense[0] == pytest.approx(masks.loss.item(), rel=1e-5)
        for chunk_size in (None, 1, 3, 7, 50):
            lean = loss_and_grads(
                lambda a, c, s=settings, k=chunk_size: infonce(a, c, chunk_size=k, **s),
                anchors, candidates)
            assert_same(lean, dense)
            if not penalty_weight:
                assert lean[1] == 0.0


def test_lean_accepts_non_contiguous_inputs():
    torch.manual_seed(13)
    anchors = torch.randn(6, 2, 8).transpose(1, 2)  # (6, 8, 2), strided
    candidates = torch.randn(6, 5, 8).transpose(1, 2)  # (6, 8, 5), strided
    lean = loss_and_grads(lambda a, c: infonce(a, c, chunk_size=4), anchors, candidates)
    dense = loss_and_grads(infonce_dense, anchors.contiguous(), candidates.contiguous())
    assert_same(lean, dense)


@pytest.mark.parametrize("clip", [2.0, None])
def test_lean_gradcheck_float64(clip):
    torch.manual_seed(8)
    anchors = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    candidates = torch.randn(4, 4, 3, dtype=torch.float64, requires_grad=True)

    def parts(a, c):
        # 4 candidate samples for 3 anchors: the own samples start at row 1 (offset path)
        result = _lean_infonce(a, c, 1, critic="dot", clip=clip, penalty_weight=0.3,
                               temperature=1.0, chunk_size=3)
        return result.loss, result.penalty

    assert torch.autograd.gradcheck(parts, (anchors, candidates))


def offset_oracle(anchors, candidates, offset, clip):
    """ℓ(i,a,b) with the own sample of anchor i at candidate row offset + i, by loops."""
    raw = torch.einsum("icb,jca->ijab", anchors.double(), candidates.double())
    scores = clip * torch.tanh(raw / clip)
    terms = []
    for i in range(anchors.shape[0]):
        own = offset + i
        negatives = torch.cat([scores[i, j].flatten() for j in range(candidates.shape[0])
                               if j != own])
        for a, b in itertools.product(range(candidates.shape[2]), range(anchors.shape[2])):
            pos = scores[i, own, a, b]
            terms.append(-pos + torch.logsumexp(torch.cat([pos[None], negatives]), 0))
    return torch.stack(terms).mean().item()


def test_offset_path_as_under_data_parallel_gather():
    """Local anchors (B = 3) against a gathered candidate batch (B' = 9) whose own rows start
    at 6: the lean and dense internals agree with each other and with a loop oracle."""
    torch.manual_seed(9)
    anchors = torch.randn(3, 6, 2)
    candidates = torch.randn(9, 6, 4)
    settings = dict(critic="dot", clip=5.0, penalty_weight=0.04, temperature=1.0)
    dense = loss_and_grads(lambda a, c: _dense_infonce(a, c, 6, **settings), anchors, candidates)
    for chunk_size in (None, 2, 4):
        lean = loss_and_grads(
            lambda a, c, k=chunk_size: _lean_infonce(a, c, 6, chunk_size=k, **settings),
            anchors, candidates)
        assert_same(lean, dense)
    assert dense[0] == pytest.approx(offset_oracle(anchors, candidates, 6, 5.0), rel=1e-5)
    # The penalty averages over all B·B'·L_x·L_y raw scores.
    raw = torch.einsum("icb,jca->ijab", anchors, candidates)
    assert dense[1] == pytest.approx(0.04 * raw.pow(2).mean().item(), rel=1e-5)


def test_gradient_through_one_output_only():
    """Backward through the loss alone or the penalty alone (the other output unused)."""
    torch.manual_seed(10)
    anchors, candidates = torch.randn(5, 8, 2), torch.randn(5, 8, 6)
    for part in ("loss", "penalty"):
        grads = {}
        for estimator in ESTIMATORS:
            a, c = anchors.clone().requires_grad_(), candidates.clone().requires_grad_()
            result = infonce(a, c, estimator=estimator, chunk_size=2)
            grads[estimator] = torch.autograd.grad(getattr(result, part), (a, c))
        for got, want in zip(grads["lean"], grads["dense"], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_lean_under_autocast_computes_in_float32():
    torch.manual_seed(11)
    anchors, candidates = torch.randn(6, 16, 1), torch.randn(6, 16, 10)
    plain = infonce(anchors, candidates, chunk_size=4)
    a, c = anchors.clone().requires_grad_(), candidates.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = infonce(a, c, chunk_size=4)
    assert mixed.loss.dtype == torch.float32
    assert mixed.loss.item() == pytest.approx(plain.loss.item(), rel=1e-5)
    (mixed.loss + mixed.penalty).backward()
    assert a.grad is not None and torch.isfinite(a.grad).all()


def test_auto_chunk_size():
    # The most candidate samples whose B·L_y·k·L_x scores fit the budget.
    assert auto_chunk_size(64, 1, 512, 64) == CHUNK_ELEMENTS // (64 * 512)
    assert 64 * auto_chunk_size(64, 1, 512, 64) * 512 <= CHUNK_ELEMENTS
    assert 64 * (auto_chunk_size(64, 1, 512, 64) + 1) * 512 > CHUNK_ELEMENTS
    assert auto_chunk_size(8, 1, 16, 8) == 8  # a small problem is one chunk
    assert auto_chunk_size(64, 1, 512, 64, budget=100) == 1  # never less than one sample
    assert auto_chunk_size(64, 2, 512, 64, budget=2 * 64 * 512 * 3) == 3


def test_lean_penalty_is_accurate_on_many_scores():
    """The sum of squared scores over half a million float32 scores stays within 1e-6 of the
    float64 value (a naive running sum drifts by ~1e-5 here)."""
    torch.manual_seed(12)
    anchors = torch.randn(16, 8, 1) + 0.5
    candidates = torch.randn(16, 8, 2048) + 0.5
    exact = infonce_dense(anchors.double(), candidates.double()).penalty.item()
    for chunk_size in (None, 3):
        lean = infonce(anchors, candidates, chunk_size=chunk_size).penalty.item()
        assert lean == pytest.approx(exact, rel=1e-6)


def test_lean_backward_under_autocast_matches_float32() -> None:
    """Forward and backward both inside ``torch.autocast`` (bf16): the lean estimator runs its
    chunks in float32 both ways, so loss and gradients equal the float32 ones."""
    torch.manual_seed(0)
    anchors = torch.randn(6, 16, 4)
    candidates = torch.randn(6, 16, 9)

    def loss_and_grads(autocast: bool) -> tuple[torch.Tensor, ...]:
        a = anchors.clone().requires_grad_()
        c = candidates.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            result = infonce(a, c, estimator="lean")
            total = result.loss + result.penalty
            total.backward()
        assert a.grad is not None and c.grad is not None
        return total.detach(), a.grad, c.grad

    for got, want in zip(loss_and_grads(True), loss_and_grads(False), strict=True):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _weighted_total(results):
    """Σ_g (g+1)·loss_g + (g+2)·penalty_g: distinct weights, so a gradient routed to the wrong
    term shows."""
    return sum((g + 1) * r.loss + (g + 2) * r.penalty for g, r in enumerate(results))


def _assert_same_gradients(shared, one_by_one, inputs):
    """The weighted totals of both lists of results have the same gradients w.r.t. ``inputs``."""
    got = torch.autograd.grad(_weighted_total(shared), inputs)
    want = torch.autograd.grad(_weighted_total(one_by_one), inputs)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("batch,n_loc,chunk_size", [
    (8, 16, None),      # 3·8·8·16 scores: the direct path
    (32, 128, None),    # 3·32·32·128 = 393k > DIRECT_ELEMENTS: chunked (one chunk)
    (32, 128, 5),       # chunked, 7 chunks, the last partial
])
@pytest.mark.parametrize("critic,clip", [("scaled_dot", 20.0), ("cosine", 20.0),
                                         ("scaled_dot", None), ("dot", 2.0)])
def test_shared_terms_equal_the_terms_one_by_one(batch, n_loc, chunk_size, critic, clip):
    """infonce_shared(anchor sets, x) gives each term's loss, penalty and gradients exactly as
    the dense estimator computes the terms one at a time."""
    torch.manual_seed(11)
    channels = 6
    settings = {"critic": critic, "clip": clip, "penalty_weight": 0.07, "temperature": 0.5}
    sets = [torch.randn(batch, channels, 1, requires_grad=True) for _ in range(3)]
    candidates = torch.randn(batch, channels, n_loc, requires_grad=True)
    shared = infonce_shared(sets, candidates, chunk_size=chunk_size, **settings)
    assert (3 * batch * batch * n_loc <= DIRECT_ELEMENTS) == (batch == 8)
    one_by_one = [infonce_dense(a, candidates, **settings) for a in sets]
    for mine, theirs in zip(shared, one_by_one, strict=True):
        assert mine.loss.item() == pytest.approx(theirs.loss.item(), rel=1e-5, abs=1e-6)
        assert mine.penalty.item() == pytest.approx(theirs.penalty.item(), rel=1e-5, abs=1e-6)
    _assert_same_gradients(shared, one_by_one, [*sets, candidates])


def test_shared_terms_with_several_anchor_locations():
    """Terms whose anchors have L_y > 1 share candidates too (P and Q per term's block)."""
    torch.manual_seed(12)
    sets = [torch.randn(16, 4, 3, requires_grad=True) for _ in range(2)]
    candidates = torch.randn(16, 4, 40, requires_grad=True)
    shared = infonce_shared(sets, candidates, chunk_size=4)
    one_by_one = [infonce_dense(a, candidates) for a in sets]
    _assert_same_gradients(shared, one_by_one, [*sets, candidates])


def test_direct_and_chunked_lean_paths_agree():
    """Below DIRECT_ELEMENTS the lean estimator computes the scores directly; the chunked path
    (forced with chunk_size) gives the same loss, penalty and gradients."""
    torch.manual_seed(13)
    anchors = torch.randn(12, 5, 1, requires_grad=True)
    candidates = torch.randn(12, 5, 30, requires_grad=True)
    direct = infonce(anchors, candidates)
    chunked = infonce(anchors, candidates, chunk_size=5)
    assert direct.loss.item() == pytest.approx(chunked.loss.item(), rel=1e-6)
    assert direct.penalty.item() == pytest.approx(chunked.penalty.item(), rel=1e-6)
    got = torch.autograd.grad(direct.loss + direct.penalty, [anchors, candidates])
    want = torch.autograd.grad(chunked.loss + chunked.penalty, [anchors, candidates])
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("n_loc", [8, 400])  # direct and chunked
def test_shared_terms_under_autocast_are_float32(n_loc):
    torch.manual_seed(14)
    sets = [torch.randn(24, 8, 1) for _ in range(3)]
    candidates = torch.randn(24, 8, n_loc)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        shared = infonce_shared(sets, candidates)
    reference = infonce_shared(sets, candidates)
    for mine, theirs in zip(shared, reference, strict=True):
        assert mine.loss.dtype == torch.float32
        assert mine.loss.item() == pytest.approx(theirs.loss.item(), rel=2e-2)


def test_shared_terms_refuse_what_they_cannot_share():
    candidates = torch.randn(4, 3, 5)
    with pytest.raises(ValueError, match="at least one anchor"):
        infonce_shared([], candidates)
    with pytest.raises(ValueError, match="share one shape"):
        infonce_shared([torch.randn(4, 3, 1), torch.randn(4, 3, 2)], candidates)
    with pytest.raises(ValueError, match="unknown estimator"):
        infonce_shared([torch.randn(4, 3, 1)], candidates, estimator="fast")  # type: ignore[arg-type]
