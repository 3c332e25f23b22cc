"""FID / KID maths, mergeable statistics and Inception weight resolution."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from t2iops.errors import ModelError
from t2iops.evaluate.fid import (
    FeatureStats,
    InceptionFeatures,
    fid_from_stats,
    frechet_distance,
    kernel_inception_distance,
    resolve_inception_weights,
    save_random_inception_weights,
)


def scipy_frechet(mu1, s1, mu2, s2) -> float:
    """The reference formula (pytorch-fid / torch-fidelity) with scipy's matrix square root."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_matches_scipy_sqrtm_on_known_gaussians():
    rng = np.random.default_rng(0)
    for d in (2, 8, 32):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = random_spd(rng, d), random_spd(rng, d)
        ours = frechet_distance(mu1, s1, mu2, s2)
        assert ours == pytest.approx(scipy_frechet(mu1, s1, mu2, s2), rel=1e-9, abs=1e-9)


def test_frechet_closed_form_for_diagonal_covariances():
    # For commuting (diagonal) covariances: |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 16.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 1 + 0 + 4 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 4) ** 2
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance(mu1, np.diag(a), mu1, np.diag(a)) == pytest.approx(0.0, abs=1e-10)


def test_frechet_of_rank_deficient_covariances_is_finite_and_real():
    # Fewer samples than dimensions, as with N < 2048 Inception features.
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 16)), rng.normal(size=(5, 16)) + 0.5
    sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    value = frechet_distance(x.mean(0), sx, y.mean(0), sy)
    # Independent reference: the non-zero eigenvalues of Sx Sy are the squared singular values
    # of A B^T with Sx = A^T A, Sy = B^T B (A, B the centred samples / sqrt(n - 1)).
    a = (x - x.mean(0)) / 2.0
    b = (y - y.mean(0)) / 2.0
    trace_sqrt = np.linalg.svd(a @ b.T, compute_uv=False).sum()
    diff = x.mean(0) - y.mean(0)
    reference = diff @ diff + np.trace(sx) + np.trace(sy) - 2 * trace_sqrt
    assert value == pytest.approx(reference, rel=1e-10)


def test_stats_match_numpy_mean_and_covariance():
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(40, 8)).astype(np.float32)
    st = FeatureStats(dim=8)
    st.update(feats)
    mu, cov = st.mean_cov()
    np.testing.assert_allclose(mu, feats.astype(np.float64).mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(cov, np.cov(feats.astype(np.float64), rowvar=False), rtol=1e-10, atol=1e-12)


def test_merged_shards_equal_single_process_statistics(tmp_path):
    rng = np.random.default_rng(3)
    real = rng.normal(size=(30, 16)).astype(np.float32)
    fake = (rng.normal(size=(30, 16)) * 1.3 + 0.2).astype(np.float32)
    single_real, single_fake = FeatureStats(dim=16), FeatureStats(dim=16)
    for i in range(0, 30, 4):  # one process, batch after batch
        single_real.update(real[i:i + 4])
        single_fake.update(fake[i:i + 4])
    shards_real, shards_fake = [], []
    for lo, hi in ((0, 12), (12, 24), (24, 30)):  # three shards of whole batches
        r, f = FeatureStats(dim=16), FeatureStats(dim=16)
        for i in range(lo, hi, 4):
            r.update(real[i:min(i + 4, hi)])
            f.update(fake[i:min(i + 4, hi)])
        r.save(tmp_path / f"r{lo}.npz")  # through the on-disk format, as merge reads them
        f.save(tmp_path / f"f{lo}.npz")
        shards_real.append(FeatureStats.load(tmp_path / f"r{lo}.npz"))
        shards_fake.append(FeatureStats.load(tmp_path / f"f{lo}.npz"))
    merged_real, merged_fake = FeatureStats.merged(shards_real), FeatureStats.merged(shards_fake)
    assert merged_real.count == single_real.count == 30
    np.testing.assert_allclose(merged_real.total, single_real.total, rtol=1e-13)
    np.testing.assert_allclose(merged_real.outer, single_real.outer, rtol=1e-13)
    np.testing.assert_array_equal(merged_real.all_features(), single_real.all_features())
    single_fid = fid_from_stats(single_real, single_fake)
    assert fid_from_stats(merged_real, merged_fake) == pytest.approx(single_fid, rel=1e-10, abs=1e-10)
    assert single_fid > 0.1


def test_merge_refuses_mismatched_dimensions():
    with pytest.raises(ValueError, match="cannot merge"):
        FeatureStats.merged([FeatureStats(dim=4), FeatureStats(dim=8)])


def test_kid_matches_direct_unbiased_mmd_when_subset_is_everything():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(12, 6)), rng.normal(size=(12, 6)) + 0.3
    mean, std, m = kernel_inception_distance(x, y, subsets=3, subset_size=1000, seed=0)
    assert m == 12  # capped at the set size
    k = lambda a, b: (a @ b.T / 6 + 1) ** 3  # noqa: E731 - the polynomial kernel, degree 3
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    n = 12
    ref = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.sum() / n**2
    # With the subset = the whole set every subset gives the same (permutation-invariant) value.
    assert mean == pytest.approx(ref, rel=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)
    farther, _, _ = kernel_inception_distance(x, y + 2.0, subsets=2, seed=0)
    assert farther > mean > 0


def test_kid_is_reproducible_with_its_seed():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(50, 4)), rng.normal(size=(40, 4))
    a = kernel_inception_distance(x, y, subsets=10, subset_size=20, seed=7)
    b = kernel_inception_distance(x, y, subsets=10, subset_size=20, seed=7)
    assert a == b and a[2] == 20 and a[1] > 0


def test_kid_needs_two_images():
    with pytest.raises(ValueError, match="at least 2"):
        kernel_inception_distance(np.zeros((1, 4)), np.zeros((5, 4)))


# ---------------------------------------------------------------------------------------
# Weights
def test_weights_from_a_local_file_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="inception_weights: .*not a file"):
        resolve_inception_weights(str(tmp_path / "nope.pth"))


def test_weights_from_an_unreachable_url_name_the_way_out(tmp_path):
    # A closed port on loopback: fails at once, no network needed.
    url = "http://127.0.0.1:9/weights-inception-2015-12-05-6726825d.pth"
    with pytest.raises(ModelError, match="cannot download .*local file or s3:// copy"):
        resolve_inception_weights(url, _cache_cfg(tmp_path))


def test_unreachable_weights_fail_when_required_and_are_explained_when_optional(tmp_path):
    from t2iops.config import config_from_dict
    from t2iops.evaluate.stage import load_inception

    url = "http://127.0.0.1:9/weights-inception-2015-12-05-6726825d.pth"
    base = _cache_cfg(tmp_path).to_dict()
    required = config_from_dict({**base, "evaluate": {**base["evaluate"], "fid": "required", "inception_weights": url}})
    with pytest.raises(ModelError, match="cannot download .*evaluate.fid=required; evaluate.fid=optional writes"):
        load_inception(required, "cpu")
    optional = config_from_dict({**base, "evaluate": {**base["evaluate"], "fid": "optional", "inception_weights": url}})
    extractor, why = load_inception(optional, "cpu")
    assert extractor is None
    assert "cannot download" in why and "evaluate.fid=optional, so the report is written without FID/KID" in why


def test_weights_with_the_wrong_layout_are_refused(tmp_path):
    import torch

    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, bad)
    with pytest.raises(ModelError, match="not torch-fidelity's pt_inception layout"):
        InceptionFeatures(bad)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a readable state dict"):
        InceptionFeatures(tmp_path / "junk.pth")


@pytest.mark.slow
def test_random_weight_inception_file_loads_and_extracts_2048_features(tmp_path):
    """The real network layout with random weights: exercises the loading path only; the
    feature values mean nothing and are not comparable to real Inception features."""
    import torch

    path = save_random_inception_weights(tmp_path / "pt_inception_random.pth", seed=0)
    extractor = InceptionFeatures(resolve_inception_weights(str(path)))
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    feats = extractor(images)
    assert feats.shape == (3, 2048) and feats.dtype == np.float32
    assert np.isfinite(feats).all() and feats.std() > 0
    # Same image, same features, whatever the batch.
    np.testing.assert_allclose(extractor(images[:1]), feats[:1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        extractor(images.float())


def _cache_cfg(tmp_path):
    from t2iops.config import load_config

    return load_config(None, [f"storage.cache_dir={tmp_path / 'cache'}"])


@pytest.mark.slow
def test_fid_and_kid_agree_with_torchmetrics_at_antialias_false(tmp_path):
    """Our extractor + merged moments + Fréchet distance against torchmetrics'
    FrechetInceptionDistance(antialias=False) and KernelInceptionDistance on the same
    random-weight network (the values themselves are meaningless)."""
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance, NoTrainInceptionV3
    from torchmetrics.image.kid import KernelInceptionDistance

    path = save_random_inception_weights(tmp_path / "pt_inception_random.pth", seed=1)
    gen = torch.Generator().manual_seed(0)
    real = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=gen)
    fake = (real.float() * 0.5 + 60).to(torch.uint8)

    extractor = InceptionFeatures(path)
    r, f = FeatureStats(), FeatureStats()
    r.update(extractor(real))
    f.update(extractor(fake))
    ours = fid_from_stats(r, f)
    ours_kid, _, _ = kernel_inception_distance(r.all_features(), f.all_features(), subsets=1, subset_size=5)

    fid = FrechetInceptionDistance(feature=2048, antialias=False, feature_extractor_weights_path=str(path))
    fid.update(real, real=True)
    fid.update(fake, real=False)
    assert ours == pytest.approx(float(fid.compute()), rel=1e-4)

    # torchmetrics' KID builds its Inception with antialias=True and downloads the weights:
    # hand it the same network with antialias=False. One subset of all images: no sampling.
    net = NoTrainInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path), antialias=False)
    kid = KernelInceptionDistance(feature=net, subsets=1, subset_size=5)
    kid.update(real, real=True)
    kid.update(fake, real=False)
    assert ours_kid == pytest.approx(float(kid.compute()[0]), rel=1e-3)
