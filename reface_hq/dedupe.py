"""Exact and near-duplicate removal (a global stage: it needs all faces at once).

Exact: two faces are the same when their source files have the same sha256, or their
decoded pixels the same digest, and they are the same face of that photo (face index).
Near: the same face seen twice (re-encoded, resized, lightly edited): perceptual hashes of
the aligned crops within ``max_phash_distance`` bits AND identity embeddings with cosine
similarity at least ``min_cosine``. Requiring both keeps two different people with
similar low-frequency structure apart and keeps two different photos of one person
(different pHash) apart. The same face on another background or in another crop of the
shot (a tight crop and the full photo) changes the whole-crop hash by 20+ bits, so a
second test looks at the face alone: the hash of the centre of the aligned crop
(``face_phash``) within ``max_face_phash_distance`` bits AND cosine at least
``face_min_cosine`` (stricter, because it ignores everything around the face).

Each duplicate group keeps one face: the largest in its source, then the sharpest, then
the smallest face_id (deterministic). The others get ``status="duplicate"`` or
``"near_duplicate"`` and ``duplicate_of``; the kept face records the identity hints of
the dropped copies in ``alt_identity_hints`` so identity grouping can resolve copies that
were filed under two people.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from . import schema


def hint_key(row: dict) -> str | None:
    hint = row.get("identity_hint")
    return f"{row['source']}:{hint}" if hint else None


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def phash_bits(hexes: list[str]) -> np.ndarray:
    return np.array([int(h, 16) for h in hexes], dtype=np.uint64)


# Set bits of every byte value: np.bitwise_count needs NumPy 2, the project allows 1.24.
_POPCOUNT8 = np.array([i.bit_count() for i in range(256)], dtype=np.uint8)


def popcount64(x: np.ndarray) -> np.ndarray:
    """Number of set bits of each uint64 in ``x`` (same shape, uint8)."""
    x = np.asarray(x, dtype=np.uint64)
    flat = np.ascontiguousarray(x.reshape(-1))
    return _POPCOUNT8[flat.view(np.uint8)].reshape(-1, 8).sum(axis=1, dtype=np.uint8) \
        .reshape(x.shape)


def near_pairs(phashes: np.ndarray, emb: np.ndarray, max_distance: int, min_cosine: float,
               chunk: int = 256) -> list[tuple[int, int]]:
    """All pairs (i < j) within both thresholds, in chunks (memory O(chunk * n))."""
    n = len(phashes)
    pairs: list[tuple[int, int]] = []
    for a in range(0, n, chunk):
        block = phashes[a:a + chunk]
        dist = popcount64(block[:, None] ^ phashes[None, :])
        sim = emb[a:a + chunk] @ emb.T
        ii, jj = np.nonzero((dist <= max_distance) & (sim >= min_cosine))
        for i, j in zip(ii.tolist(), jj.tolist(), strict=False):
            if a + i < j:
                pairs.append((a + i, j))
    return pairs


@dataclasses.dataclass
class Dedupe:
    name = "dedupe"
    max_phash_distance: int = 4
    min_cosine: float = 0.95
    max_face_phash_distance: int = 8
    face_min_cosine: float = 0.985

    def config(self) -> dict:
        return dataclasses.asdict(self)

    def __call__(self, rows: list[dict]) -> list[dict]:
        out = list(rows)
        live = [i for i, r in enumerate(rows) if schema.is_ok(r)]
        if len(live) < 2:
            return out
        n = len(live)
        uf = _UnionFind(n)
        exact: dict[tuple, int] = {}
        for k, i in enumerate(live):
            r = rows[i]
            for key in (("sha", r.get("sha256"), r.get("face_index")),
                        ("pix", r.get("pixel_sha256"), r.get("face_index"))):
                if key[1] is None:
                    continue
                if key in exact:
                    uf.union(exact[key], k)
                else:
                    exact[key] = k
        usable = [k for k in range(n) if rows[live[k]].get("phash")
                  and rows[live[k]].get("embedding") is not None]
        if len(usable) >= 2:
            ph = phash_bits([rows[live[k]]["phash"] for k in usable])
            emb = np.asarray([rows[live[k]]["embedding"] for k in usable], dtype=np.float32)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12
            for a, b in near_pairs(ph, emb, self.max_phash_distance, self.min_cosine):
                uf.union(usable[a], usable[b])
        usable = [k for k in range(n) if rows[live[k]].get("face_phash")
                  and rows[live[k]].get("embedding") is not None]
        if len(usable) >= 2 and self.max_face_phash_distance >= 0:
            ph = phash_bits([rows[live[k]]["face_phash"] for k in usable])
            emb = np.asarray([rows[live[k]]["embedding"] for k in usable], dtype=np.float32)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12
            for a, b in near_pairs(ph, emb, self.max_face_phash_distance, self.face_min_cosine):
                uf.union(usable[a], usable[b])
        groups: dict[int, list[int]] = {}
        for k in range(n):
            groups.setdefault(uf.find(k), []).append(k)
        for members in groups.values():
            if len(members) < 2:
                continue
            ranked = sorted(members, key=lambda k: (-(rows[live[k]].get("face_size") or 0),
                                                    -(rows[live[k]].get("sharpness") or 0),
                                                    rows[live[k]]["face_id"]))
            keep = ranked[0]
            kept_row = rows[live[keep]]
            own = hint_key(kept_row)
            alts = sorted({h for k in ranked[1:] if (h := hint_key(rows[live[k]]))
                           and h != own} | set(kept_row.get("alt_identity_hints") or []))
            out[live[keep]] = dict(kept_row, alt_identity_hints=alts or None)
            for k in ranked[1:]:
                r = rows[live[k]]
                # Exact when the dropped copy shares bytes/pixels with the kept one.
                same = (r.get("sha256") == kept_row.get("sha256")
                        or r.get("pixel_sha256") == kept_row.get("pixel_sha256"))
                reason = "duplicate" if same else "near_duplicate"
                dropped = schema.drop(r, self.name, reason,
                                      f"{reason.replace('_', ' ')} of {kept_row['face_id']} "
                                      f"({kept_row.get('origin')})")
                dropped["duplicate_of"] = kept_row["face_id"]
                out[live[k]] = dropped
        return out
