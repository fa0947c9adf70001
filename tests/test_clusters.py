"""RECIST shape clusters on real RECIST derived from ISIC masks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from napari_recist_seg.clusters import ClusterModel, recist_features
from napari_recist_seg.recist import FEATURE_NAMES, Recist, recist_from_mask

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
ISIC = DATA / "isic2017_train256"


@pytest.fixture(scope="module")
def isic_features() -> np.ndarray:
    if not ISIC.is_dir():
        pytest.skip(f"real data missing: {ISIC}")
    from PIL import Image

    masks = sorted((ISIC / "masks").glob("*_segmentation.png"))[:120]
    recists = [recist_from_mask(np.asarray(Image.open(m)) > 0) for m in masks]
    return recist_features(recists)


def test_fit_predict_matches_sklearn_kmeans(isic_features):
    from sklearn.cluster import KMeans

    cm = ClusterModel.fit(isic_features, k=4, seed=3)
    assert cm.k == 4 and cm.feature_names == FEATURE_NAMES
    z = (isic_features - isic_features.mean(0)) / isic_features.std(0)
    km = KMeans(n_clusters=4, n_init=10, random_state=3).fit(z)
    np.testing.assert_allclose(cm.centers, km.cluster_centers_, atol=1e-9)
    np.testing.assert_array_equal(cm.predict(isic_features), km.predict(z))
    # Single row and a Recist directly.
    r = Recist([[0, 0], [0, 40]], [[-10, 20], [10, 20]])
    assert cm.predict_recists([r]).shape == (1,)
    assert cm.predict(isic_features[0]).tolist() == [cm.predict(isic_features)[0]]


def test_round_trip_plain_arrays_and_json(isic_features):
    cm = ClusterModel.fit(isic_features, k=3, seed=0)
    again = ClusterModel.from_arrays(cm.to_arrays())
    via_json = ClusterModel.from_arrays(json.loads(json.dumps(cm.to_json())))
    np.testing.assert_array_equal(again.predict(isic_features), cm.predict(isic_features))
    np.testing.assert_array_equal(via_json.predict(isic_features), cm.predict(isic_features))
    np.testing.assert_array_equal(via_json.centers, cm.centers)
    npz = {k: np.asarray(v) for k, v in cm.to_arrays().items()}
    np.testing.assert_array_equal(ClusterModel.from_arrays(npz).mean, cm.mean)
    with pytest.raises(ValueError, match="missing"):
        ClusterModel.from_arrays({"centers": cm.centers})


def test_auto_k_is_the_best_silhouette_and_reproducible(isic_features):
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    cm = ClusterModel.fit(isic_features, k=None, seed=0)
    assert 2 <= cm.k <= 8
    z = (isic_features - isic_features.mean(0)) / isic_features.std(0)
    scores = {
        k: silhouette_score(z, KMeans(n_clusters=k, n_init=10, random_state=0).fit(z).labels_)
        for k in range(2, 9)
    }
    assert cm.k == max(scores, key=scores.get)
    np.testing.assert_array_equal(ClusterModel.fit(isic_features, seed=0).centers, cm.centers)


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="features must be"):
        ClusterModel.fit(np.zeros((10, 3)))
    x = np.random.default_rng(0).normal(size=(20, len(FEATURE_NAMES)))
    x[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        ClusterModel.fit(x)
    same = np.ones((10, len(FEATURE_NAMES)))
    with pytest.raises(ValueError, match="distinct"):
        ClusterModel.fit(same, k=3)
    with pytest.raises(ValueError, match="distinct"):
        ClusterModel.fit(same)
    cm = ClusterModel.fit(np.random.default_rng(1).normal(size=(30, len(FEATURE_NAMES))), k=2)
    with pytest.raises(ValueError, match="features per row"):
        cm.predict(np.zeros((2, 3)))


def test_constant_feature_does_not_break_standardisation():
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(0, 0.1, (15, 7)), rng.normal(3, 0.1, (15, 7))])
    x[:, 5] = 1.0  # e.g. every lesion horizontal
    cm = ClusterModel.fit(x, k=2)
    labels = cm.predict(x)
    assert len(set(labels[:15])) == 1 and len(set(labels[15:])) == 1 and labels[0] != labels[15]
