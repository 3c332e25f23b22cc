"""FID and KID with the feature extractor that papers use, and statistics that merge across shards.

Feature extractor: torch-fidelity's ``FeatureExtractorInceptionV3`` (the TF-2015 Inception ported
to PyTorch, ``pt_inception-2015-12-05`` weights), 2048-d pool features, TF1.x-compatible
resize: the same as torchmetrics' FID with ``antialias=False``. torchmetrics >= 1.8 defaults to
``antialias=True``, which resizes differently from TF / torch-fidelity and no longer gives the
numbers papers report.

Statistics: every shard keeps, per image set, the float64 sum of features, the float64 sum of
outer products and the count (what torchmetrics' FID keeps internally), plus the float32
features themselves for KID. Sums add, so merged shards give the single-process mean and
covariance up to float64 rounding; the Fréchet distance is computed here from the merged
moments (eigenvalue method, checked against ``scipy.linalg.sqrtm`` in the tests).
"""
from __future__ import annotations

import logging
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..errors import ModelError

log = logging.getLogger(__name__)

# torch-fidelity's release of the TF Inception weights (the file FID papers use).
STANDARD_INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
FEATURE_DIM = 2048
EXTRACTOR_SETTINGS = {
    "network": "torch-fidelity FeatureExtractorInceptionV3 (inception-v3-compat)",
    "features": "2048-d pool3",
    "antialias": False,
    "resize": "TF1.x-compatible bilinear to 299x299",
}
# KID's polynomial kernel (x.y * gamma + coef) ** degree, torchmetrics' defaults; gamma = 1 / d.
KID_DEGREE = 3
KID_COEF = 1.0


# ---------------------------------------------------------------------------------------
# Weights
def resolve_inception_weights(spec: Optional[str], cfg: Any = None) -> Path:
    """A local file holding the Inception weights.

    ``spec`` is a local file, an ``s3://`` object (downloaded once into the storage cache) or an
    https URL (default: torch-fidelity's release). A URL is looked up in torch hub's checkpoint
    folder and in the t2iops cache first, then downloaded with its hash prefix checked.
    Raises :class:`ModelError` saying what was tried when the weights can't be had.
    """
    from .. import storage

    spec = spec or STANDARD_INCEPTION_URL
    if storage.is_s3(spec):
        try:
            return storage.materialize(spec, cfg, kind="weights")
        except Exception as exc:  # noqa: BLE001 - any failure means "no weights"
            raise ModelError(f"evaluate.inception_weights: cannot fetch {spec}: {exc}") from None
    if spec.startswith(("http://", "https://")):
        return _download_weights(spec, cfg)
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ModelError(f"evaluate.inception_weights: {path} is not a file")
    return path


def _download_weights(url: str, cfg: Any) -> Path:
    import torch

    from .. import storage

    name = url.rstrip("/").rsplit("/", 1)[-1]
    candidates = [Path(torch.hub.get_dir()) / "checkpoints" / name, storage.cache_root(cfg) / "weights" / name]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    target = candidates[1]
    target.parent.mkdir(parents=True, exist_ok=True)
    match = re.search(r"-([a-f0-9]{6,})\.", name)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.")
    os.close(fd)
    try:
        torch.hub.download_url_to_file(url, tmp, hash_prefix=match.group(1) if match else None, progress=False)
        os.replace(tmp, target)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(
            f"evaluate.inception_weights: cannot download {url} ({type(exc).__name__}: {exc}); "
            "point evaluate.inception_weights at a local file or s3:// copy of the weights"
        ) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def save_random_inception_weights(path: str | Path, seed: int = 0) -> Path:
    """Write a state dict with the real Inception layout and random weights.

    For tests and speed benchmarks only: features from it are not Inception features, and FID
    values computed with it are not comparable to anything."""
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):  # keep the random init
            return None

    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp) / "empty.pt"
        torch.save({}, empty)
        torch.manual_seed(seed)
        net = _Unloaded("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    # He init keeps activations at a sane scale through ~20 conv layers (PyTorch's default
    # init shrinks them geometrically, leaving near-zero features).
    for module in net.modules():
        if isinstance(module, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


class InceptionFeatures:
    """2048-d Inception pool features of uint8 images ``[B, 3, H, W]`` (papers' settings).

    This is torch-fidelity's extractor as is: its forward resizes with the TF1.x-compatible
    bilinear resize, exactly what torchmetrics' ``NoTrainInceptionV3`` does with
    ``antialias=False`` (a test checks our FID against torchmetrics' with that setting).
    Using it directly skips importing all of torchmetrics, which costs tens of seconds here."""

    def __init__(self, weights_path: str | Path, device: str = "cpu"):
        import torch
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        weights_path = Path(weights_path)
        try:
            # Safe load first: refuses anything but tensors, so the load below (torch-fidelity
            # unpickles without weights_only) only ever sees a plain state dict.
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"Inception weights {weights_path}: not a readable state dict ({exc})") from None
        if not isinstance(state, dict) or "Mixed_7c.branch_pool.conv.weight" not in state:
            raise ModelError(f"Inception weights {weights_path}: not torch-fidelity's pt_inception layout")
        del state
        try:
            self.net = FeatureExtractorInceptionV3(
                "inception-v3-compat", [str(FEATURE_DIM)], feature_extractor_weights_path=str(weights_path)
            ).to(device)
        except RuntimeError as exc:
            raise ModelError(f"Inception weights {weights_path} do not fit the network: {exc}") from None
        self.device = device
        self.weights_path = weights_path

    def __call__(self, images_uint8) -> np.ndarray:
        import torch

        if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4 or images_uint8.shape[1] != 3:
            raise ValueError(f"expected uint8 images [B,3,H,W], got {images_uint8.dtype} {tuple(images_uint8.shape)}")
        with torch.inference_mode():
            (features,) = self.net(images_uint8.to(self.device))
        return features.float().cpu().numpy()


# ---------------------------------------------------------------------------------------
# Mergeable statistics
@dataclass
class FeatureStats:
    """Sum, sum of outer products (float64) and count of a feature set, plus the features."""

    dim: int = FEATURE_DIM
    count: int = 0
    total: np.ndarray = field(default=None)  # type: ignore[assignment]
    outer: np.ndarray = field(default=None)  # type: ignore[assignment]
    features: list = field(default_factory=list)

    def __post_init__(self):
        if self.total is None:
            self.total = np.zeros(self.dim, dtype=np.float64)
        if self.outer is None:
            self.outer = np.zeros((self.dim, self.dim), dtype=np.float64)

    def update(self, feats: np.ndarray) -> None:
        feats = np.asarray(feats)
        if feats.ndim != 2 or feats.shape[1] != self.dim:
            raise ValueError(f"features must be [N, {self.dim}], got {feats.shape}")
        f64 = feats.astype(np.float64)
        self.total += f64.sum(axis=0)
        self.outer += f64.T @ f64
        self.count += len(feats)
        self.features.append(feats.astype(np.float32))

    def all_features(self) -> np.ndarray:
        if not self.features:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(self.features, axis=0)

    @classmethod
    def merged(cls, parts: list["FeatureStats"]) -> "FeatureStats":
        if not parts:
            raise ValueError("nothing to merge")
        out = cls(dim=parts[0].dim)
        for p in parts:
            if p.dim != out.dim:
                raise ValueError(f"cannot merge {p.dim}-d and {out.dim}-d statistics")
            out.total += p.total
            out.outer += p.outer
            out.count += p.count
            out.features.extend(p.features)
        return out

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        if self.count < 2:
            raise ValueError(f"need at least 2 images for a covariance, have {self.count}")
        mu = self.total / self.count
        cov = (self.outer - self.count * np.outer(mu, mu)) / (self.count - 1)
        return mu, cov

    def save(self, path: str | Path) -> None:
        np.savez(path, dim=self.dim, count=self.count, total=self.total, outer=self.outer,
                 features=self.all_features())

    @classmethod
    def load(cls, path: str | Path) -> "FeatureStats":
        with np.load(path) as z:
            feats = z["features"]
            return cls(dim=int(z["dim"]), count=int(z["count"]), total=z["total"].copy(),
                       outer=z["outer"].copy(), features=[feats] if len(feats) else [])


# ---------------------------------------------------------------------------------------
# Distances
def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), float64.

    Tr((S1 S2)^1/2) is the sum of square roots of the eigenvalues of S1^1/2 S2 S1^1/2, a
    symmetric PSD matrix, so ``eigh`` gives real eigenvalues even when S1 S2 is near-singular
    (as it is with fewer than 2048 samples). With S1 = V diag(w) V^T only the numerically
    non-zero eigenpairs (k of them) contribute, so the product is formed in k dimensions:
    exact, and much cheaper than two d x d products when N < d."""
    return _frechet(np.asarray(mu1, np.float64), _sqrt_factor(sigma1), np.asarray(sigma1, np.float64), mu2, sigma2)


def _sqrt_factor(sigma: np.ndarray) -> np.ndarray:
    """``H`` (d x k) with ``H H^T = sigma`` over sigma's numerically non-zero eigenpairs."""
    s = np.asarray(sigma, np.float64)
    w, v = np.linalg.eigh((s + s.T) / 2)
    keep = w > max(w.max(), 0.0) * len(w) * np.finfo(np.float64).eps
    return v[:, keep] * np.sqrt(w[keep])


def _frechet(mu1: np.ndarray, half1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    mu2, s2 = np.asarray(mu2, np.float64), np.asarray(sigma2, np.float64)
    inner = half1.T @ s2 @ half1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt)


def fid_from_stats(real: FeatureStats, fake: FeatureStats) -> float:
    return fids_against(real, {"fake": fake})["fake"]


def fids_against(real: FeatureStats, fakes: dict[str, FeatureStats]) -> dict[str, float]:
    """FID of each generated set against the same real set; the real covariance's
    eigendecomposition (the d^3 part) is computed once."""
    mu_r, cov_r = real.mean_cov()
    half = _sqrt_factor(cov_r)
    out = {}
    for name, fake in fakes.items():
        mu_f, cov_f = fake.mean_cov()
        out[name] = _frechet(mu_r, half, cov_r, mu_f, cov_f)
    return out


def kernel_inception_distance(
    real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0,
) -> tuple[float, float, int]:
    """KID as torchmetrics computes it (unbiased polynomial-kernel MMD^2 over random subsets, its
    default kernel), with a seeded generator so a merged run repeats the single-process value. The
    subset size is capped at the smaller set. Returns (mean, std, subset size used)."""
    real = np.asarray(real, np.float64)
    fake = np.asarray(fake, np.float64)
    m = min(subset_size, len(real), len(fake))
    if m < 2:
        raise ValueError(f"KID needs at least 2 real and 2 generated images, have {len(real)} and {len(fake)}")
    gamma = 1.0 / real.shape[1]
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(subsets):
        x = real[rng.permutation(len(real))[:m]]
        y = fake[rng.permutation(len(fake))[:m]]
        k_xx = (x @ x.T * gamma + KID_COEF) ** KID_DEGREE
        k_yy = (y @ y.T * gamma + KID_COEF) ** KID_DEGREE
        k_xy = (x @ y.T * gamma + KID_COEF) ** KID_DEGREE
        value = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        scores.append(value - 2.0 * k_xy.sum() / m**2)
    scores_arr = np.asarray(scores)
    std = float(scores_arr.std(ddof=1)) if len(scores_arr) > 1 else 0.0
    return float(scores_arr.mean()), std, m
