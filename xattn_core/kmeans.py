"""k-means in plain torch (greedy k-means++ seeding, Lloyd iterations, best of several restarts).

It follows scikit-learn's algorithm closely enough that labels agree with it on the same data (tested), while
running on the model's device with no numpy or scikit-learn at run time. All restarts run side by side, so each
pass over the points serves every restart.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

KMEANS_CLUSTERS = 5  # the official segmentation's cluster count and restarts
KMEANS_RESTARTS = 10
_INCREMENTAL_FRACTION = 4  # recompute cluster sums in full while more than N / 4 points change cluster


def _squared_distances(features: Tensor, squared_norms: Tensor, centres: Tensor) -> Tensor:
    """``[N, M]`` squared Euclidean distances to ``centres`` ``[M, D]`` in the ||x||^2 - 2 x.c + ||c||^2 form.

    One matmul; for the skinny shapes here it is bound by reading ``features`` once, which is why all the
    restarts are run side by side and share each pass.
    """
    cross = features @ centres.T
    return (squared_norms[:, None] - 2 * cross + (centres * centres).sum(1)[None]).clamp_min_(0)


def _plus_plus_centres(
    features: Tensor, squared_norms: Tensor, clusters: int, generators: list[torch.Generator]
) -> Tensor:
    """Greedy k-means++ for every restart at once: ``[restarts, clusters, D]`` initial centres.

    As in scikit-learn, the first centre is a uniformly drawn point and each further one the best (lowest
    potential) of ``2 + floor(ln k)`` candidates drawn with probability proportional to the squared distance to
    the nearest centre so far. Each restart draws from its own generator, so running them side by side gives
    the same centres as running them one after another.
    """
    count, device = features.shape[0], features.device
    restarts, trials = len(generators), 2 + int(math.log(clusters))
    first = torch.cat([torch.randint(count, (1,), generator=generator) for generator in generators]).to(device)
    chosen = [first]
    closest = _squared_distances(features, squared_norms, features[first]).T.double()  # [restarts, N]
    potential = closest.sum(1)
    rows = torch.arange(restarts, device=device)
    for _ in range(1, clusters):
        draws = torch.stack([torch.rand(trials, generator=generator, dtype=torch.float64) for generator in generators])
        draws = draws.to(device) * potential[:, None]
        candidates = torch.searchsorted(closest.cumsum(1), draws).clamp_max_(count - 1)  # [restarts, trials]
        to_candidates = _squared_distances(features, squared_norms, features[candidates.flatten()]).T.double()
        closest_if_added = torch.minimum(closest[:, None], to_candidates.view(restarts, trials, count))
        potentials = closest_if_added.sum(2)
        best = potentials.argmin(1)
        closest, potential = closest_if_added[rows, best], potentials[rows, best]
        chosen.append(candidates[rows, best])
    return features[torch.stack(chosen, 1)]  # [restarts, clusters, D]


def _fill_empty_clusters(labels: Tensor, own_distances: Tensor, clusters: int) -> Tensor:
    """Move the points farthest from their centres into empty clusters, one each (scikit-learn's relocation).

    ``labels`` and ``own_distances`` are ``[N]``. Only points of clusters with more than one member move, so
    no cluster is emptied in turn; with at least ``clusters`` points every cluster ends up with a member.
    """
    counts = torch.bincount(labels, minlength=clusters)
    labels = labels.clone()
    for cluster in (counts == 0).nonzero().flatten().tolist():
        movable = counts[labels] > 1
        point = int(torch.where(movable, own_distances, -math.inf).argmax())
        counts[labels[point]] -= 1
        counts[cluster] = 1
        labels[point] = cluster
    return labels


def _assign(features: Tensor, squared_norms: Tensor, centres: Tensor) -> tuple[Tensor, Tensor]:
    """Labels and squared distances ``[R, N]`` to the nearest of each restart's centres ``[R, k, D]``.

    No cluster is left empty (see _fill_empty_clusters).
    """
    restarts, clusters, _ = centres.shape
    distances = _squared_distances(features, squared_norms, centres.flatten(0, 1))
    own, labels = distances.view(-1, restarts, clusters).min(2)
    own, labels = own.T.contiguous(), labels.T.contiguous()
    counts = F.one_hot(labels, clusters).sum(1)  # [R, k]
    for restart in (counts == 0).any(1).nonzero().flatten().tolist():
        labels[restart] = _fill_empty_clusters(labels[restart], own[restart], clusters)
        own[restart] = distances.view(-1, restarts, clusters)[:, restart].gather(1, labels[restart, :, None])[:, 0]
    return labels, own


def _cluster_sums(features: Tensor, labels: Tensor, clusters: int) -> Tensor:
    """``[R, k, D]`` sum of the points in each cluster, for labels ``[R, n]`` of the points ``features`` ``[n, D]``."""
    members = F.one_hot(labels, clusters).transpose(1, 2).to(features.dtype)  # [R, k, n]
    return members @ features


def _lloyd(
    features: Tensor, squared_norms: Tensor, centres: Tensor, max_iterations: int, tolerance: float
) -> tuple[Tensor, Tensor]:
    """Lloyd iterations for all restarts' ``centres`` ``[R, k, D]``: labels ``[R, N]`` and inertia ``[R]``.

    A restart stops, as in scikit-learn, when its labels repeat (strict convergence) or its total squared
    centre shift is at most ``tolerance`` (absolute here); stopped restarts keep their centres and leave the
    shared passes, so the result is that of running each restart alone (up to float rounding in the shared
    matmul). Once few points change cluster, the cluster sums are updated with just those points, which saves
    a pass over the data per iteration.
    """
    restarts, clusters, _ = centres.shape
    count = features.shape[0]
    centres = centres.clone()
    sums = torch.zeros_like(centres)
    previous = torch.full((restarts, count), -1, dtype=torch.long, device=features.device)
    running = torch.arange(restarts, device=features.device)
    for _iteration in range(max_iterations):
        labels, _ = _assign(features, squared_norms, centres[running])
        old_labels = previous[running]
        changed = (labels != old_labels).any(0).nonzero().flatten()
        if changed.numel() > count // _INCREMENTAL_FRACTION or bool((old_labels < 0).any()):
            sums[running] = _cluster_sums(features, labels, clusters)
        else:
            moved = features[changed]
            sums[running] += _cluster_sums(moved, labels[:, changed], clusters)
            sums[running] -= _cluster_sums(moved, old_labels[:, changed], clusters)
        sizes = F.one_hot(labels, clusters).sum(1)  # never 0: _assign fills empty clusters
        new_centres = sums[running] / sizes[..., None]
        shift = ((new_centres - centres[running]) ** 2).flatten(1).sum(1, dtype=torch.float64)
        stopped = (labels == old_labels).all(1) | (shift <= tolerance)
        centres[running] = new_centres
        previous[running] = labels
        running = running[~stopped]
        if running.numel() == 0:
            break
    # labels for the final centres (after strict convergence these are the labels the run ended with)
    labels, own = _assign(features, squared_norms, centres)
    return labels, own.sum(1, dtype=torch.float64)


def kmeans(
    features: Tensor,
    clusters: int = KMEANS_CLUSTERS,
    restarts: int = KMEANS_RESTARTS,
    seed: int = 0,
    max_iterations: int = 300,
    tolerance: float = 1e-4,
) -> Tensor:
    """Labels ``[N]`` (int64) of the best of ``restarts`` seeded greedy k-means++ / Lloyd runs (lowest inertia).

    ``features`` is ``[N, D]``, one point per row. ``tolerance`` is relative, as in scikit-learn: a run stops
    when the total squared centre shift is at most ``tolerance`` times the mean per-feature variance of the
    data. Deterministic for a given seed (all random draws come from seeded CPU generators); runs on the
    features' device in float32, with float64 sums for potentials, shifts and inertia. The data are centred
    first (k-means does not care) so that the matmul distance form keeps its precision, e.g. for attention
    rows whose entries are all near 1 / N. No cluster is ever left empty.
    """
    if features.dim() != 2:
        raise ValueError(f"k-means features must be [N, D], got shape {tuple(features.shape)}")
    if clusters < 1 or restarts < 1:
        raise ValueError(f"k-means needs at least one cluster and one restart, got {clusters} and {restarts}")
    if features.shape[0] < clusters:
        raise ValueError(f"k-means needs at least {clusters} points for {clusters} clusters, got {features.shape[0]}")
    features = features.float()
    features = features - features.mean(0)
    squared_norms = (features * features).sum(1)
    mean_variance = float(squared_norms.sum(dtype=torch.float64)) / features.numel()
    seeds = torch.randint(2**62, (restarts,), generator=torch.Generator().manual_seed(seed)).tolist()
    generators = [torch.Generator().manual_seed(restart_seed) for restart_seed in seeds]
    centres = _plus_plus_centres(features, squared_norms, clusters, generators)
    labels, inertia = _lloyd(features, squared_norms, centres, max_iterations, tolerance * mean_variance)
    return labels[int(inertia.argmin())]
