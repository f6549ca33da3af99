import itertools
import time

import pytest
import torch

from xattn_core.kmeans import KMEANS_CLUSTERS, _lloyd, _plus_plus_centres, _squared_distances, kmeans


def agreement(labels, reference, clusters=KMEANS_CLUSTERS):
    """Fraction of points on which two labellings agree under the best relabelling."""
    confusion = torch.zeros(clusters, clusters, dtype=torch.long)
    confusion.index_put_((labels, reference), torch.ones_like(labels), accumulate=True)
    best = max(
        sum(int(confusion[i, p]) for i, p in enumerate(perm)) for perm in itertools.permutations(range(clusters))
    )
    return best / labels.numel()


def blobs(spreads, separation, points=2000, dims=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(len(spreads), dims, generator=generator) * separation
    truth = torch.randint(len(spreads), (points,), generator=generator)
    noise = torch.randn(points, dims, generator=generator) * torch.tensor(spreads)[truth, None]
    return centres[truth] + noise, truth


@pytest.mark.parametrize(
    ("name", "spreads", "separation", "truth_range"),
    [
        ("separate", (0.5, 1.0, 1.5, 2.0, 2.5), 1.5, (0.999, 1.0)),
        # about 5 % of the points lie nearer another blob's centre than their own
        ("overlapping", (0.5, 1.0, 1.5, 2.0, 3.0), 1.0, (0.9, 0.99)),
    ],
)
def test_kmeans_matches_scikit_learn(name, spreads, separation, truth_range):
    cluster = pytest.importorskip("sklearn.cluster")
    features, truth = blobs(spreads, separation)
    ours = kmeans(features)
    theirs = torch.from_numpy(cluster.KMeans(n_clusters=5, n_init=10, random_state=0).fit(features.numpy()).labels_)
    match, to_truth = agreement(ours, theirs.long()), agreement(ours, truth)
    print(f"{name}: agreement with scikit-learn {match:.4f}, with the generating blobs {to_truth:.4f}")
    assert match >= 0.99
    assert truth_range[0] <= to_truth <= truth_range[1]


def test_kmeans_is_deterministic_per_seed():
    features, _ = blobs((1.0, 1.5, 2.0, 2.5, 3.0), 0.35, points=500)
    first = kmeans(features, seed=3)
    assert first.dtype == torch.int64 and first.shape == (500,)
    assert torch.equal(first, kmeans(features, seed=3))
    assert torch.equal(first, kmeans(features.double(), seed=3))  # computed in float32 either way


def test_restarts_side_by_side_equal_restarts_one_by_one():
    features, _ = blobs((0.5, 1.0, 1.5, 2.0, 3.0), 1.0, points=600)
    features = features - features.mean(0)
    squared_norms = (features * features).sum(1)
    tolerance = 1e-4 * float(features.var(0, unbiased=False).mean())
    together = _plus_plus_centres(features, squared_norms, 5, [torch.Generator().manual_seed(s) for s in range(4)])
    labels, inertia = _lloyd(features, squared_norms, together, 300, tolerance)
    assert len({tuple(row.tolist()) for row in labels}) > 1  # the restarts really differ
    for restart in range(4):
        alone = _plus_plus_centres(features, squared_norms, 5, [torch.Generator().manual_seed(restart)])
        assert torch.equal(alone[0], together[restart])
        alone_labels, alone_inertia = _lloyd(features, squared_norms, alone, 300, tolerance)
        assert torch.equal(alone_labels[0], labels[restart])
        assert alone_inertia[0] == pytest.approx(float(inertia[restart]), rel=1e-6)


def test_kmeans_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 5 points"):
        kmeans(torch.rand(4, 3))
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        kmeans(torch.rand(4, 3, 2))


def test_kmeans_never_leaves_a_cluster_empty():
    # identical points: every k-means++ candidate is the same point, so all five centres coincide
    labels = kmeans(torch.ones(20, 3))
    assert torch.equal(torch.bincount(labels, minlength=5).clamp_max(1), torch.ones(5, dtype=torch.long))
    # many duplicates plus four distinct points: five clusters exist and all are found
    features = torch.cat([torch.zeros(100, 4), torch.eye(4) * 10])
    labels = kmeans(features)
    assert torch.bincount(labels, minlength=5).sort().values.tolist() == [1, 1, 1, 1, 100]


def test_lloyd_relocates_an_empty_cluster():
    generator = torch.Generator().manual_seed(0)
    features = torch.cat([torch.randn(40, 8, generator=generator) + 6 * i for i in range(5)])
    squared_norms = (features * features).sum(1)
    duplicated = features[[0, 0, 40, 80, 120]][None]  # two equal centres: the second gets no points
    nearest = _squared_distances(features, squared_norms, duplicated[0]).argmin(1)
    assert torch.bincount(nearest, minlength=5)[1] == 0
    labels, inertia = _lloyd(features, squared_norms, duplicated, max_iterations=300, tolerance=0.0)
    assert torch.isfinite(inertia).all()
    by_blob = labels[0].view(5, 40)  # the relocated centre ends up taking the blob left without one
    assert (by_blob == by_blob[:, :1]).all()
    assert sorted(by_blob[:, 0].tolist()) == [0, 1, 2, 3, 4]


def test_kmeans_on_a_full_size_attention_map():
    generator = torch.Generator().manual_seed(0)
    attention = torch.rand(4096, 4096, generator=generator)
    attention /= attention.sum(1, keepdim=True)
    start = time.perf_counter()
    labels = kmeans(attention)
    print(f"k-means, 4096 x 4096, {KMEANS_CLUSTERS} clusters, 10 restarts: {time.perf_counter() - start:.2f} s")
    assert labels.shape == (4096,)
    assert (torch.bincount(labels, minlength=KMEANS_CLUSTERS) > 0).all()
