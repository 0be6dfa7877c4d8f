"""Identity grouping and cleaning, and the train/test split by identity (global stages).

With hints (``use_hints=True``): faces are grouped by their source's identity hint; each
group's robust centre is found from its own members (start at the normalised coordinate
median, then re-average the members within ``max_distance`` twice); faces farther than
``max_distance`` (cosine distance) from their centre are dropped as ``identity_outlier``.
A face that was merged from copies filed under several hints goes to the nearest of those
centres. Faces without a hint join the nearest hinted centre within ``assign_distance``
(stricter than ``max_distance``: with no label to confirm it, a match must be close), the
rest are clustered.

Without hints, or for the unhinted rest: agglomerative clustering (average linkage on
cosine distance, cut at ``cluster_threshold``, scipy), then the same outlier cleaning.
Identities with fewer than ``min_photos`` faces are dropped (``too_few_photos``).

One person, one identity: a person filed under two names, in two sources, or found both
as a hinted group and as a cluster of unlabelled faces would otherwise become two
identities that the split may put on both sides. Before cleaning, groups whose robust
centres are within ``merge_distance`` are merged (single linkage over centres; the merged
identity takes the name of its largest group, ties by name). Then every face is compared
with all centres: a face nearer another identity's centre than its own by more than
``move_margin`` (and within ``max_distance`` of it) is moved there (an impostor filed in
the wrong folder goes to its true identity); a face beyond ``max_distance`` of its own
centre is dropped (``identity_outlier``).

Names: a hinted identity is ``<source>-<hint>``, a cluster ``cluster-<NNNNN>`` numbered
by its smallest face_id, both made safe as folder names (a hint that had to be changed
for that, e.g. one in a non-Latin script, gets a short digest of the original appended).
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from . import schema
from .dedupe import hint_key
from .sources import safe_name


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v, axis=-1, keepdims=True) + 1e-12)


def robust_centre(emb: np.ndarray, max_distance: float, iterations: int = 2) -> np.ndarray:
    centre = _unit(np.median(emb, axis=0))
    for _ in range(iterations):
        d = 1.0 - emb @ centre
        near = emb[d <= max_distance]
        if len(near) == 0:
            break
        centre = _unit(near.mean(axis=0))
    return centre


def _average_linkage(emb: np.ndarray, threshold: float) -> np.ndarray:
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist
    if len(emb) == 1:
        return np.zeros(1, dtype=int)
    dist = np.clip(pdist(emb, metric="cosine"), 0.0, 2.0)
    return fcluster(linkage(dist, method="average"), t=threshold, criterion="distance") - 1


def cluster(emb: np.ndarray, threshold: float, chunk: int = 1024) -> np.ndarray:
    """Cluster labels 0..k-1: average linkage on cosine distance, cut at ``threshold``.

    Every average-linkage cluster cut at t is connected in the graph of pairs closer than
    t (each merge of mean distance <= t has a pair <= t), so linkage runs per connected
    component of that graph: the same labels, without the n^2 distance matrix of the
    whole set (20k faces would need 1.6 GB).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    n = len(emb)
    if n <= 1:
        return np.zeros(n, dtype=int)
    unit = _unit(np.asarray(emb, dtype=np.float64))
    rows, cols = [], []
    for a in range(0, n, chunk):
        sim = unit[a:a + chunk] @ unit.T
        ii, jj = np.nonzero(1.0 - sim <= threshold)
        rows.append(ii + a)
        cols.append(jj)
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(n, n))
    n_comp, comp = connected_components(graph, directed=False)
    labels = np.empty(n, dtype=int)
    next_label = 0
    for k in range(n_comp):
        idx = np.nonzero(comp == k)[0]
        sub = _average_linkage(unit[idx], threshold)
        labels[idx] = sub + next_label
        next_label += int(sub.max()) + 1
    # Number clusters by first member so the labels do not depend on component order.
    order = {}
    return np.array([order.setdefault(lab, len(order)) for lab in labels], dtype=int)


@dataclasses.dataclass
class IdentityGroup:
    name = "identity"
    use_hints: bool = True
    max_distance: float = 0.12
    cluster_threshold: float = 0.08
    min_photos: int = 3
    assign_distance: float = 0.05
    merge_distance: float = 0.05
    move_margin: float = 0.02

    def config(self) -> dict:
        return dataclasses.asdict(self)

    def __post_init__(self):
        if self.min_photos < 1:
            raise ValueError(f"min_photos must be >= 1, got {self.min_photos}")
        if not 0 < self.max_distance < 2 or not 0 < self.cluster_threshold < 2:
            raise ValueError("max_distance and cluster_threshold are cosine distances in (0, 2)")
        if not 0 <= self.merge_distance < 2 or self.move_margin < 0:
            raise ValueError("merge_distance must be a cosine distance in [0, 2) (0: never "
                             "merge) and move_margin >= 0")

    def __call__(self, rows: list[dict]) -> list[dict]:
        out = list(rows)
        live = [i for i, r in enumerate(rows) if schema.is_ok(r)]
        missing = [i for i in live if rows[i].get("embedding") is None]
        for i in missing:
            out[i] = schema.drop(rows[i], self.name, "no_embedding", "face has no embedding")
        live = [i for i in live if rows[i].get("embedding") is not None]
        if not live:
            return out
        emb = _unit(np.asarray([rows[i]["embedding"] for i in live], dtype=np.float32))
        pos = {i: k for k, i in enumerate(live)}
        assigned: dict[int, str] = {}      # row index -> identity key
        centres: dict[str, np.ndarray] = {}

        unhinted = list(live)
        if self.use_hints:
            groups: dict[str, list[int]] = {}
            for i in live:
                key = hint_key(rows[i])
                if key and not rows[i].get("alt_identity_hints"):
                    groups.setdefault(key, []).append(i)
            for key, members in sorted(groups.items()):
                centres[key] = robust_centre(emb[[pos[i] for i in members]], self.max_distance)
            unhinted = []
            for i in live:
                candidates = [h for h in [hint_key(rows[i]), *(rows[i].get("alt_identity_hints")
                                                             or [])] if h and h in centres]
                if not candidates:
                    if hint_key(rows[i]) or rows[i].get("alt_identity_hints"):
                        # Its group had only merged copies: let it form its own centre.
                        key = hint_key(rows[i]) or rows[i]["alt_identity_hints"][0]
                        centres.setdefault(key, emb[pos[i]])
                        assigned[i] = key
                    else:
                        unhinted.append(i)
                    continue
                assigned[i] = min(candidates,
                                  key=lambda h: (1.0 - float(emb[pos[i]] @ centres[h]), h))
            if self.assign_distance > 0 and centres and unhinted:
                keys = sorted(centres)
                mat = np.stack([centres[k] for k in keys])
                rest = []
                for i in unhinted:
                    d = 1.0 - mat @ emb[pos[i]]
                    j = int(np.argmin(d))
                    if d[j] <= self.assign_distance:
                        assigned[i] = keys[j]
                    else:
                        rest.append(i)
                unhinted = rest

        if unhinted:
            labels = cluster(emb[[pos[i] for i in unhinted]], self.cluster_threshold)
            members: dict[int, list[int]] = {}
            for i, lab in zip(unhinted, labels.tolist(), strict=False):
                members.setdefault(lab, []).append(i)
            ordered = sorted(members.values(), key=lambda m: min(rows[i]["face_id"] for i in m))
            for n, m in enumerate(ordered, start=1):
                for i in m:
                    assigned[i] = f"cluster:{n:05d}"

        by_identity: dict[str, list[int]] = {}
        for i, key in assigned.items():
            by_identity.setdefault(key, []).append(i)
        by_identity = self._merge(by_identity, emb, pos)
        keys = sorted(by_identity)
        centres = {k: robust_centre(emb[[pos[i] for i in by_identity[k]]], self.max_distance)
                   for k in keys}
        # Faces nearer another identity's centre than their own go there: a photo of
        # someone else filed in a folder is moved to that person, not kept nor lost.
        moved: dict[int, str] = {}
        if len(keys) > 1:
            mat = np.stack([centres[k] for k in keys])
            faces = [(i, n) for n, k in enumerate(keys) for i in by_identity[k]]
            for a in range(0, len(faces), 4096):   # memory O(chunk * identities)
                part = faces[a:a + 4096]
                d = 1.0 - emb[[pos[i] for i, _ in part]] @ mat.T
                best = np.argmin(d, axis=1)
                for (i, own), j, row in zip(part, best.tolist(), d, strict=False):
                    if (j != own and row[j] <= self.max_distance
                            and row[j] < row[own] - self.move_margin):
                        moved[i] = keys[j]
        if moved:
            for key in keys:
                by_identity[key] = [i for i in by_identity[key] if i not in moved]
            for i, key in moved.items():
                by_identity[key].append(i)
        for key, members in by_identity.items():
            if not members:
                continue
            members = sorted(members)
            vecs = emb[[pos[i] for i in members]]
            centre = robust_centre(vecs, self.max_distance)
            name = _identity_name(key)
            kept = []
            for i, v in zip(members, vecs, strict=False):
                d = max(0.0, float(1.0 - v @ centre))  # rounding gives -1e-7
                row = dict(rows[i], identity=name, identity_distance=d)
                if d > self.max_distance:
                    out[i] = schema.drop(row, self.name, "identity_outlier",
                                         f"cosine distance {d:.3f} to the centre of {name} "
                                         f"exceeds {self.max_distance}")
                else:
                    out[i] = row
                    kept.append(i)
            if len(kept) < self.min_photos:
                for i in kept:
                    out[i] = schema.drop(out[i], self.name, "too_few_photos",
                                         f"{name} has {len(kept)} photos, fewer than "
                                         f"{self.min_photos}")
        return out

    def _merge(self, by_identity: dict[str, list[int]], emb: np.ndarray,
               pos: dict[int, int]) -> dict[str, list[int]]:
        """Groups whose robust centres are within ``merge_distance`` become one."""
        keys = sorted(by_identity)
        if self.merge_distance <= 0 or len(keys) < 2:
            return by_identity
        from .dedupe import _UnionFind
        mat = np.stack([robust_centre(emb[[pos[i] for i in by_identity[k]]], self.max_distance)
                        for k in keys])
        uf = _UnionFind(len(keys))
        for start in range(0, len(keys), 2048):   # memory O(chunk * identities)
            close = 1.0 - mat[start:start + 2048] @ mat.T <= self.merge_distance
            for a, b in zip(*np.nonzero(close), strict=False):
                if start + a < b:
                    uf.union(int(start + a), int(b))
        merged: dict[int, list[str]] = {}
        for n, k in enumerate(keys):
            merged.setdefault(uf.find(n), []).append(k)
        out: dict[str, list[int]] = {}
        for group in merged.values():
            # The largest group names the person (ties: hinted names before clusters, then
            # by name), so adding a source with a few more photos keeps the name stable.
            name = min(group, key=lambda k: (-len(by_identity[k]), k.startswith("cluster:"), k))
            out[name] = sorted(i for k in group for i in by_identity[k])
        return out


def _identity_name(key: str) -> str:
    kind, _, rest = key.partition(":")
    if kind == "cluster":
        return f"cluster-{rest}"
    raw = f"{kind}-{rest}"
    name = safe_name(raw)
    if name != raw:
        # safe_name is lossy ("José" and "Josè", or any two names in a non-Latin script,
        # map to one string); a digest of the original keeps different people apart.
        name = f"{name[:90]}-{hashlib.sha256(raw.encode('utf-8')).hexdigest()[:8]}"
    return name


@dataclasses.dataclass
class SplitByIdentity:
    """Whole identities go to ``test`` (a seeded, order-free choice), the rest to ``train``.

    Identities are ranked by sha256(seed, identity); the first ``round(n * test_fraction)``
    (at least one when there are two or more identities and the fraction is positive)
    form the test split. Adding identities does not reshuffle the others' ranks.
    """

    name = "split"
    test_fraction: float = 0.1
    seed: int = 0

    def config(self) -> dict:
        return dataclasses.asdict(self)

    def __post_init__(self):
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1), got {self.test_fraction}")

    def __call__(self, rows: list[dict]) -> list[dict]:
        identities = sorted({r["identity"] for r in rows if schema.is_ok(r)})
        ranked = sorted(identities, key=lambda s: hashlib.sha256(
            f"{self.seed}:{s}".encode()).hexdigest())
        n_test = round(len(identities) * self.test_fraction)
        if self.test_fraction > 0 and len(identities) >= 2:
            n_test = max(1, n_test)
        test = set(ranked[:n_test])
        return [dict(r, split="test" if r["identity"] in test else "train")
                if schema.is_ok(r) else r for r in rows]
