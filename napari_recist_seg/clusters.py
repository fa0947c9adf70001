"""RECIST shape clusters: k-means on standardised RECIST shape features.

The cluster of a lesion's RECIST is the auxiliary label of the A1+L model (Chu et al.,
MIDL 2021). Fitting uses scikit-learn; prediction is plain numpy (nearest centre after
standardisation), and the fitted model is a few arrays stored in the checkpoint as is,
so nothing is ever unpickled.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> a = rng.normal(0, 0.1, (20, 2)); b = rng.normal(3, 0.1, (20, 2))
>>> cm = ClusterModel.fit(np.vstack([a, b]), k=2, feature_names=("x", "y"))
>>> labels = cm.predict(np.vstack([a, b]))
>>> bool(len(set(labels[:20])) == 1 and len(set(labels[20:])) == 1 and labels[0] != labels[20])
True
>>> ClusterModel.from_arrays(cm.to_arrays()).predict([[3.0, 3.0]]).tolist() == [labels[20]]
True
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from napari_recist_seg.recist import FEATURE_NAMES, Recist, shape_features

__all__ = ["ClusterModel", "recist_features", "AUTO_K_RANGE"]

# Candidate K for automatic selection (silhouette); the paper uses a handful of groups.
AUTO_K_RANGE = (2, 8)
# Silhouette is O(n^2): score on at most this many samples.
SILHOUETTE_SAMPLE = 2000


def recist_features(recists: Iterable[Recist], *, use_mm: bool = False) -> np.ndarray:
    """Stack :func:`~napari_recist_seg.recist.shape_features` of many RECIST, ``(N, F)``."""
    rows = [shape_features(r, use_mm=use_mm) for r in recists]
    if not rows:
        return np.zeros((0, len(FEATURE_NAMES)))
    return np.vstack(rows)


@dataclass(frozen=True)
class ClusterModel:
    """Fitted shape clusters: centres in standardised feature space plus the scaling.

    Attributes
    ----------
    centers : np.ndarray
        ``(K, F)`` cluster centres of the standardised features.
    mean, scale : np.ndarray
        ``(F,)`` feature mean and standard deviation used for standardisation.
    feature_names : tuple of str
        Names of the F features (``recist.FEATURE_NAMES`` by default).
    """

    centers: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    feature_names: tuple[str, ...] = FEATURE_NAMES

    def __post_init__(self) -> None:
        c = np.asarray(self.centers, dtype=float)
        m = np.asarray(self.mean, dtype=float).ravel()
        s = np.asarray(self.scale, dtype=float).ravel()
        if c.ndim != 2 or c.shape[0] < 1:
            raise ValueError(f"cluster centres must be (K, F) with K >= 1; got shape {c.shape}")
        if m.shape != (c.shape[1],) or s.shape != (c.shape[1],):
            raise ValueError(
                f"feature mean/scale must have {c.shape[1]} values; got {m.shape} and {s.shape}"
            )
        if not (np.all(np.isfinite(c)) and np.all(np.isfinite(m)) and np.all(s > 0)):
            raise ValueError("cluster model contains non-finite values or non-positive scales")
        names = tuple(str(n) for n in self.feature_names)
        if len(names) != c.shape[1]:
            raise ValueError(f"{len(names)} feature names for {c.shape[1]} features")
        object.__setattr__(self, "centers", c)
        object.__setattr__(self, "mean", m)
        object.__setattr__(self, "scale", s)
        object.__setattr__(self, "feature_names", names)

    @property
    def k(self) -> int:
        """Number of clusters."""
        return int(self.centers.shape[0])

    # -- fitting -------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        k: int | None = None,
        *,
        seed: int = 0,
        k_range: Sequence[int] = AUTO_K_RANGE,
        feature_names: Sequence[str] = FEATURE_NAMES,
    ) -> "ClusterModel":
        """k-means on standardised features.

        Parameters
        ----------
        features : np.ndarray
            ``(N, F)`` feature rows (e.g. :func:`recist_features`).
        k : int, optional
            Number of clusters; ``None`` picks K in ``k_range`` (inclusive) with the
            best silhouette score on a seeded subsample.
        seed : int
            Seed for k-means and the subsample (the result is reproducible).

        Raises
        ------
        ValueError
            Too few samples, non-finite features, or an invalid K.
        """
        from sklearn.cluster import KMeans
        from sklearn.metrics import silhouette_score

        x = np.asarray(features, dtype=float)
        if x.ndim != 2 or x.shape[1] != len(feature_names):
            raise ValueError(
                f"features must be (N, {len(feature_names)}); got shape {x.shape}"
            )
        if not np.all(np.isfinite(x)):
            raise ValueError("features contain NaN or infinity")
        n = x.shape[0]
        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        # A constant feature carries no shape information; keep it neutral.
        scale = np.where(scale > 1e-12, scale, 1.0)
        z = (x - mean) / scale
        n_distinct = len(np.unique(np.round(z, 9), axis=0))

        def run(kk: int) -> Any:
            return KMeans(n_clusters=kk, n_init=10, random_state=seed).fit(z)

        if k is not None:
            k = int(k)
            if k < 1:
                raise ValueError(f"the number of clusters must be >= 1, got {k}")
            if k > n_distinct:
                raise ValueError(
                    f"cannot make {k} clusters from {n_distinct} distinct RECIST shapes"
                )
            km = run(k)
        else:
            lo, hi = int(k_range[0]), int(k_range[1])
            hi = min(hi, n_distinct - 1)
            if hi < lo:
                raise ValueError(
                    f"automatic K needs more than {lo} distinct RECIST shapes; got {n_distinct}"
                )
            rng = np.random.default_rng(seed)
            sub = rng.choice(n, size=min(n, SILHOUETTE_SAMPLE), replace=False)
            best = None
            for kk in range(lo, hi + 1):
                km_k = run(kk)
                labels = km_k.labels_[sub]
                if len(np.unique(labels)) < 2:
                    continue
                score = float(silhouette_score(z[sub], labels))
                if best is None or score > best[0]:
                    best = (score, km_k)
            if best is None:
                raise ValueError("automatic K failed: k-means found a single cluster")
            km = best[1]
        centers = km.cluster_centers_
        return cls(centers, mean, scale, tuple(feature_names))

    @classmethod
    def fit_recists(
        cls, recists: Iterable[Recist], k: int | None = None, *, seed: int = 0
    ) -> "ClusterModel":
        """Fit on RECIST measurements directly (pixel lengths)."""
        return cls.fit(recist_features(recists), k, seed=seed)

    # -- prediction ----------------------------------------------------------------
    def standardize(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=float)
        if x.ndim == 1:
            x = x[None]
        if x.shape[1] != self.centers.shape[1]:
            raise ValueError(
                f"expected {self.centers.shape[1]} features per row; got shape {x.shape}"
            )
        return (x - self.mean) / self.scale

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Euclidean distances ``(N, K)`` to the centres in standardised space."""
        z = self.standardize(features)
        return np.sqrt(((z[:, None, :] - self.centers[None]) ** 2).sum(-1))

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Cluster index (int64, ``(N,)``) of each feature row: the nearest centre."""
        return np.argmin(self.distances(features), axis=1).astype(np.int64)

    def predict_recists(self, recists: Iterable[Recist]) -> np.ndarray:
        return self.predict(recist_features(recists))

    # -- plain-array round trip -------------------------------------------------------
    def to_arrays(self) -> dict[str, Any]:
        """Plain arrays / names (JSON- and npz-friendly, no pickle)."""
        return {
            "centers": self.centers.copy(),
            "mean": self.mean.copy(),
            "scale": self.scale.copy(),
            "feature_names": list(self.feature_names),
        }

    def to_json(self) -> dict[str, Any]:
        """:meth:`to_arrays` with lists instead of arrays (for ``config.json``)."""
        a = self.to_arrays()
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in a.items()}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any]) -> "ClusterModel":
        """Inverse of :meth:`to_arrays` / :meth:`to_json`.

        Raises
        ------
        ValueError
            Missing keys or inconsistent shapes.
        """
        missing = [k for k in ("centers", "mean", "scale") if k not in arrays]
        if missing:
            raise ValueError(f"cluster model is missing {', '.join(missing)}")
        names = arrays.get("feature_names")
        if names is None:
            names = FEATURE_NAMES
        names = tuple(str(n) for n in np.asarray(names).ravel().tolist())
        if names != tuple(FEATURE_NAMES) and len(names) == len(FEATURE_NAMES):
            warnings.warn(
                f"cluster features {names} differ from this version's {FEATURE_NAMES}",
                stacklevel=2,
            )
        return cls(
            np.asarray(arrays["centers"], dtype=float),
            np.asarray(arrays["mean"], dtype=float),
            np.asarray(arrays["scale"], dtype=float),
            names,
        )
