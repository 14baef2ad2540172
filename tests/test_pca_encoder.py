"""The PCA-stem linear encoder (``model.encoder: pca``): its stem against scikit-learn's PCA,
its refusals, its place in a method and a checkpoint, and what RR learns with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from mmssl.config import ConfigError, resolve
from mmssl.methods import TaxonomyMethod
from mmssl.nn import PCAEncoder, StemNotFitted

SHAPE = (1, 4, 4, 4)


def _volumes(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    # Unequal variances along a few directions, so the components are well separated.
    basis = torch.randn(6, 64, generator=generator, dtype=torch.float64)
    weights = torch.randn(n, 6, generator=generator, dtype=torch.float64) * torch.tensor(
        [5.0, 4.0, 3.0, 2.0, 1.5, 1.0], dtype=torch.float64)
    noise = 0.1 * torch.randn(n, 64, generator=generator, dtype=torch.float64)
    return (weights @ basis + noise + 3.0).reshape(n, *SHAPE).float()


def test_stem_gives_the_whitened_principal_components_of_scikit_learn() -> None:
    volumes = _volumes(40)
    encoder = PCAEncoder(in_channels=1, input_size=4, spatial_dims=3, components=5,
                         latent_dim=2)
    kept = encoder.fit(volumes)
    flat = volumes.reshape(40, -1).double().numpy()
    oracle = PCA(n_components=5, whiten=True, svd_solver="full").fit(flat)
    expected = oracle.transform(flat)
    scores = encoder.stem(volumes).double().numpy()
    signs = np.sign((scores * expected).sum(axis=0))  # PCA fixes no sign
    assert np.all(signs != 0)
    np.testing.assert_allclose(scores, expected * signs, atol=2e-4)
    np.testing.assert_allclose(scores.std(axis=0, ddof=1), 1.0, atol=1e-4)  # whitened
    assert kept["explained_variance"] == pytest.approx(
        oracle.explained_variance_ratio_.sum(), rel=1e-5)
    assert kept["volumes"] == 40 and kept["components"] == 5
    # The sign of each component is fixed (largest-magnitude weight positive): deterministic.
    basis = encoder.basis.numpy()
    assert np.all(basis[np.arange(5), np.abs(basis).argmax(axis=1)] > 0)


def test_stem_refuses_what_it_cannot_fit() -> None:
    encoder = PCAEncoder(input_size=4, spatial_dims=3, components=5)
    with pytest.raises(StemNotFitted, match="not fitted"):
        encoder(_volumes(3))
    with pytest.raises(ValueError, match=r"pca_components = 5 needs at least 6 training"):
        encoder.fit(_volumes(5))
    with pytest.raises(ValueError, match="shape"):
        encoder.fit(torch.zeros(10, 1, 4, 4))
    rank_two = _volumes(2).reshape(2, -1).repeat(10, 1).reshape(20, *SHAPE)
    with pytest.raises(ValueError, match="only 1 directions"):
        encoder.fit(rank_two)
    broken = _volumes(10)
    broken[3, 0, 1, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        encoder.fit(broken)
    assert not encoder.is_fitted


def _method(seed: int = 0) -> TaxonomyMethod:
    torch.manual_seed(seed)
    return TaxonomyMethod.create(
        ["t1", "falff"], {"t1": SHAPE, "falff": SHAPE}, seed=seed,
        model={"encoder": "pca", "pca_components": 4, "latent_dim": 2, "local_taps": [],
               "global_head": "none"},
        objective={"name": "RR"})


def test_fitted_stem_travels_in_the_state_dict() -> None:
    method = _method()
    data = {"t1": _volumes(30, 1), "falff": _volumes(30, 2)}
    kept = method.fit_stems(lambda modality: data[modality])
    assert set(kept) == {"t1", "falff"}
    again = _method(seed=1)
    assert not again.encoder("t1").is_fitted
    again.load_state_dict(method.state_dict())
    for modality in ("t1", "falff"):
        assert again.encoder(modality).is_fitted
        torch.testing.assert_close(again.encoder(modality)(data[modality]).z,
                                   method.encoder(modality)(data[modality]).z)
    # R = z with global_head none: the RR term sees the linear representation itself.
    assert isinstance(method.global_heads["t1"], torch.nn.Identity)


def test_rr_on_the_pca_encoder_learns_the_factor_the_modalities_share() -> None:
    """Ground truth: one latent factor moves a pattern in each modality; everything else in the
    two modalities is independent and larger. After RR training z follows the factor, which
    the same encoder untrained does not."""
    generator = torch.Generator().manual_seed(0)
    n, voxels = 256, 64
    shared = torch.randn(n, 1, generator=generator)
    patterns = {m: torch.randn(1, voxels, generator=generator) for m in ("t1", "falff")}
    data = {}
    for modality, pattern in patterns.items():
        nuisance = torch.randn(n, 8, generator=generator) @ (
            2.0 * torch.randn(8, voxels, generator=generator))
        data[modality] = (0.7 * shared @ pattern + 0.15 * nuisance
                          + 0.3 * torch.randn(n, voxels, generator=generator)).reshape(n, *SHAPE)
    method = TaxonomyMethod.create(
        ["t1", "falff"], {"t1": SHAPE, "falff": SHAPE},
        model={"encoder": "pca", "pca_components": 12, "latent_dim": 2, "local_taps": [],
               "global_head": "none"},
        objective={"name": "RR"})
    method.fit_stems(lambda modality: data[modality][:192])

    def shared_r2(modality: str) -> float:
        with torch.no_grad():
            z = method.encoder(modality)(data[modality][192:]).z.double().numpy()
        target = shared[192:, 0].double().numpy()
        design = np.column_stack([np.ones(len(z)), z])
        fitted = design @ np.linalg.lstsq(design, target, rcond=None)[0]
        return 1.0 - float(((target - fitted) ** 2).sum() / ((target - target.mean()) ** 2).sum())

    torch.manual_seed(3)
    method.encoder("t1").linear.reset_parameters()
    before = {m: shared_r2(m) for m in ("t1", "falff")}
    optimiser = torch.optim.Adam(method.parameters(), lr=1e-2)
    rows = torch.Generator().manual_seed(1)
    method.train()
    for _ in range(300):
        index = torch.randperm(192, generator=rows)[:32]
        loss, _ = method.compute_loss({m: x[index] for m, x in data.items()}, None)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = {m: shared_r2(m) for m in ("t1", "falff")}
    assert min(after.values()) > 0.8, (before, after)  # held out: 64 subjects not trained on
    assert max(before.values()) < 0.6, (before, after)


def test_configuration_refuses_the_pca_encoder_with_local_terms(tmp_path: Path) -> None:
    where = {"data.neuro.manifest": "cohort/manifest.csv"}
    with pytest.raises(ConfigError, match=r"model.encoder.*no local features.*CR-XX"):
        resolve(["neuro-quick", "pca_rr"], overrides={**where, "objective.name": "CR-XX"},
                cwd=tmp_path)
    with pytest.raises(ConfigError, match="model.local_taps"):
        resolve(["neuro-quick", "pca_rr"], overrides={**where, "model.local_taps": ["block1"]},
                cwd=tmp_path)
    with pytest.raises(ConfigError, match="model.global_head"):
        resolve(["neuro-quick"], overrides={**where, "model.global_head": "none"}, cwd=tmp_path)
    config = resolve(["neuro-quick", "pca_rr"], overrides=where, cwd=tmp_path)
    assert config.model.encoder == "pca" and config.model_name == "RR"
    assert config.data.settings.augmentation.pad == 0
