"""Fit the identity and near-duplicate thresholds of a build from labelled photos.

``python -m reface_hq calibrate --source LABELLED --embedder NAME --out preset.json``

Labelled photos (one folder per person) are detected, aligned, hashed and embedded with
the build's own stages. Identities are split in two halves by a seeded hash of their
label: thresholds are fitted on the *fit* half and the error rates are reported on both
halves, so the held-out numbers come from people the fit never saw.

What is fitted (cosine distances of unit embeddings):

* ``max_identity_distance`` (face to an identity's centre): the ``target`` quantile of the
  distances of other people's faces to a centre, i.e. at most ``target`` of impostors
  would be kept. False split = genuine faces (to the centre of their other photos) beyond.
* ``cluster_threshold`` (the average-linkage cut): 1.25 times the largest mean pair
  distance within one person, never above the ``target`` quantile of the mean pair
  distances between two people. Tight on purpose: a person cut in two clusters is
  re-joined by the centre merge, two people in one cluster are never separated later.
  ``assign_distance`` (an unlabelled face
  joining a labelled centre): the impostor-to-centre quantile at a tenth of the target
  (no label confirms it), at most ``merge_distance``.
* ``merge_distance`` (two groups are one person): half-way between the largest distance
  of two centres of one person (random halves of their photos, at least 2 each) and the
  ``target`` quantile of centre distances of different people, never above the latter.
* ``dup_face_min_cosine`` for the face-hash near-duplicate test: the smallest cosine at
  which at most ``target / 10`` of all distinct photo pairs of one person (face hashes
  within ``max_face_phash_distance``) would be dropped as copies (never below 0.98).

The preset is JSON: ``{"embedder", "thresholds": {...}, "fit": {...}, "held_out":
{...}, "data": ...}``; ``BuildConfig(thresholds=FILE)`` / ``build --thresholds FILE``
reads it. Shipped presets live in ``reface_hq/presets/<embedder>.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from . import schema

PRESET_DIR = Path(__file__).with_name("presets")
#: Build fields a preset may set.
THRESHOLD_FIELDS = ("max_identity_distance", "cluster_threshold", "assign_distance",
                    "merge_distance", "dup_min_cosine", "max_face_phash_distance",
                    "dup_face_min_cosine")


class CalibrationError(ValueError):
    """Bad calibration input (too few identities, a bad preset file); names the input."""


def shipped_preset(embedder: str) -> Path | None:
    """The preset file shipped for a ``faces`` embedder name (``dlib``, ...), if any."""
    p = PRESET_DIR / f"{embedder}.json"
    return p if p.is_file() else None


def read_preset(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise CalibrationError(f"thresholds preset {path}: file does not exist")
    try:
        preset = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CalibrationError(f"thresholds preset {path}: cannot read as JSON ({e})") from None
    th = preset.get("thresholds") if isinstance(preset, dict) else None
    if not isinstance(th, dict) or not th:
        raise CalibrationError(f"thresholds preset {path}: no 'thresholds' object")
    unknown = sorted(set(th) - set(THRESHOLD_FIELDS))
    if unknown:
        raise CalibrationError(f"thresholds preset {path}: unknown thresholds {unknown} "
                               f"(known: {list(THRESHOLD_FIELDS)})")
    for k, v in th.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < 64:
            raise CalibrationError(f"thresholds preset {path}: {k} must be a number, got {v!r}")
    return preset


# --- embedding labelled photos -------------------------------------------------------

def embed_labelled(sources, work: Path, embedder: str = "dlib", aligned: bool = False,
                   progress: bool = False) -> list[dict]:
    """One live row per labelled photo (its largest face), embedded and hashed.

    ``aligned``: the photos are FFHQ-aligned crops already (no detection).
    """
    from .stages import Decode, DetectAlign, Embed, Fingerprint
    rows = []
    for src in sources:
        rows += [r for r in src.rows(work) if schema.is_ok(r) and r.get("identity_hint")]
    def say(what: str) -> None:
        if progress:  # the steps take minutes on thousands of photos: say which one runs
            print(f"calibrate: {what}", file=sys.stderr, flush=True)
    say(f"{len(rows)} labelled photos; reading them")
    rows = Decode(min_source_side=32)(rows)
    say("detecting and aligning faces" if not aligned else "photos are aligned already")
    if aligned:
        rows = [dict(r, face_id=f"{r['row_id']}-0", face_index=0, aligned_path=r["local_path"])
                if schema.is_ok(r) else r for r in rows]
    else:
        detect = DetectAlign(output_size=256, transform_size=512, enable_padding=False)
        detect.folder = str(work / "aligned")
        rows = detect(rows)
        # One face per photo: the largest (a labelled photo is of its person).
        best: dict[str, dict] = {}
        for r in rows:
            if schema.is_ok(r) and (r["row_id"] not in best
                                    or r["face_size"] > best[r["row_id"]]["face_size"]):
                best[r["row_id"]] = r
        rows = list(best.values())
    say(f"embedding {sum(schema.is_ok(r) for r in rows)} faces with {embedder}")
    rows = Embed(embedder=embedder)(Fingerprint()(rows))
    return [r for r in rows if schema.is_ok(r) and r.get("embedding") is not None]


# --- fitting -------------------------------------------------------------------------

def _labels_of(rows: list[dict], aliases: dict[str, str]) -> np.ndarray:
    out = []
    for r in rows:
        src, hint = r["source"], r["identity_hint"]
        lab = f"{src}:{hint}"
        # An alias names a label with or without its source prefix.
        if lab in aliases:
            lab = aliases[lab] if ":" in aliases[lab] else f"{src}:{aliases[lab]}"
        elif hint in aliases:
            lab = f"{src}:{aliases[hint]}"
        out.append(lab)
    return np.array(out, dtype=object)


def _arrays(rows: list[dict], aliases: dict[str, str]):
    from .dedupe import phash_bits
    emb = np.asarray([r["embedding"] for r in rows], dtype=np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12
    labels = _labels_of(rows, aliases)
    pix = np.array([r.get("pixel_sha256") for r in rows], dtype=object)
    face = phash_bits([r["face_phash"] for r in rows])
    return emb, labels, pix, face


def _distributions(emb, labels, pix, face, max_distance: float, seed: int = 0) -> dict:
    from .dedupe import popcount64
    from .identity import robust_centre
    n = len(labels)
    dist = 1.0 - emb @ emb.T
    iu = np.triu(np.ones((n, n), dtype=bool), k=1)
    same = labels[:, None] == labels[None, :]
    copy = pix[:, None] == pix[None, :]     # one photo filed twice is not two photos
    fh = popcount64(face[:, None] ^ face[None, :])
    ids = sorted(set(labels.tolist()))
    centres = {k: robust_centre(emb[labels == k], max_distance) for k in ids}
    genuine_centre, impostor_centre = [], []
    for k in ids:
        idx = np.nonzero(labels == k)[0]
        if len(idx) >= 2:
            for i in idx:
                rest = [j for j in idx if j != i]
                genuine_centre.append(1.0 - float(emb[i] @ robust_centre(emb[rest], max_distance)))
        others = np.nonzero(labels != k)[0]
        impostor_centre += (1.0 - emb[others] @ centres[k]).tolist()
    rng = np.random.default_rng(seed)
    half_centres = []
    for k in ids:
        idx = np.nonzero(labels == k)[0]
        if len(idx) >= 4:
            idx = rng.permutation(idx)
            a, b = idx[: len(idx) // 2], idx[len(idx) // 2:]
            half_centres.append(1.0 - float(robust_centre(emb[a], max_distance)
                                             @ robust_centre(emb[b], max_distance)))
    mat = np.stack([centres[k] for k in ids])
    cc = 1.0 - mat @ mat.T
    # Average-linkage distances: mean pair distance within one person (distinct photos)
    # and between two people, the quantity the clustering cut compares.
    link_same, link_diff = [], []
    for a, ka in enumerate(ids):
        ia = np.nonzero(labels == ka)[0]
        block = dist[np.ix_(ia, ia)][np.triu_indices(len(ia), 1)]
        if len(block):
            link_same.append(float(block.mean()))
        for kb in ids[a + 1:]:
            link_diff.append(float(dist[np.ix_(ia, np.nonzero(labels == kb)[0])].mean()))
    return {
        "genuine_pairs": dist[same & iu & ~copy], "impostor_pairs": dist[~same & iu],
        "genuine_centre": np.array(genuine_centre), "impostor_centre": np.array(impostor_centre),
        "same_person_centres": np.array(half_centres),
        "different_person_centres": cc[np.triu_indices(len(ids), 1)],
        "same_person_linkage": np.array(link_same), "different_person_linkage": np.array(link_diff),
        "genuine_face_hash": fh[same & iu & ~copy],
        "genuine_cos": 1.0 - dist[same & iu & ~copy],
        "n_faces": n, "n_identities": len(ids),
    }


def fit_thresholds(d: dict, target: float = 0.01, max_face_phash_distance: int = 8) -> dict:
    if len(d["impostor_pairs"]) == 0 or len(d["genuine_pairs"]) == 0:
        raise CalibrationError("calibration needs at least two identities with two photos each")
    q = float(np.quantile(d["impostor_centre"], target))
    diff_l = float(np.quantile(d["different_person_linkage"], target))
    same_l = float(d["same_person_linkage"].max()) if len(d["same_person_linkage"]) else 0.0
    # Cut tight: a person cut in two clusters is re-joined by the centre merge, two people
    # in one cluster are not separated by anything later.
    pair = min(diff_l, 1.25 * same_l) if same_l > 0 else diff_l
    assign = float(np.quantile(d["impostor_centre"], target / 10))
    diff_c = float(np.quantile(d["different_person_centres"], target)) \
        if len(d["different_person_centres"]) else q
    same_c = float(d["same_person_centres"].max()) if len(d["same_person_centres"]) else 0.0
    merge = min(diff_c, 0.5 * (same_c + diff_c))
    # Near duplicates: a distinct photo dropped is lost for good, so at most a tenth of
    # the target of all distinct same-person pairs may fall under the rule.
    cos = d["genuine_cos"]
    near = np.sort(cos[d["genuine_face_hash"] <= max_face_phash_distance])[::-1]
    allowed = int(np.floor(target / 10 * len(cos)))
    dup_cos = 0.98
    if len(near) > allowed:
        dup_cos = max(0.98, float(near[allowed]) + 1e-4)
    return {"max_identity_distance": round(q, 4), "cluster_threshold": round(pair, 4),
            "assign_distance": round(min(assign, q, merge), 4), "merge_distance": round(merge, 4),
            "max_face_phash_distance": int(max_face_phash_distance),
            "dup_face_min_cosine": round(min(dup_cos, 0.999), 4)}


def error_rates(d: dict, th: dict) -> dict:
    """False merge / false split of each threshold on one set of distributions."""
    def frac(x, mask_fn):
        return round(float(mask_fn(x).mean()), 4) if len(x) else None
    t, c = th["max_identity_distance"], th["cluster_threshold"]
    m = th["merge_distance"]
    return {
        "faces": d["n_faces"], "identities": d["n_identities"],
        "outlier_false_merge": frac(d["impostor_centre"], lambda x: x <= t),
        "outlier_false_split": frac(d["genuine_centre"], lambda x: x > t),
        "cluster_false_merge": frac(d["different_person_linkage"], lambda x: x <= c),
        "cluster_false_split": frac(d["same_person_linkage"], lambda x: x > c),
        "pair_false_merge": frac(d["impostor_pairs"], lambda x: x <= c),
        "pair_false_split": frac(d["genuine_pairs"], lambda x: x > c),
        "group_false_merge": frac(d["different_person_centres"], lambda x: x <= m),
        "group_false_split": frac(d["same_person_centres"], lambda x: x > m),
        "near_duplicate_false_drop": frac(
            np.stack([d["genuine_face_hash"], d["genuine_cos"]], axis=1),
            lambda x: (x[:, 0] <= th["max_face_phash_distance"])
            & (x[:, 1] >= th["dup_face_min_cosine"])),
    }


def split_identities(labels: np.ndarray, seed: int = 0, fraction: float = 0.5) -> set:
    """The fit half of the identities: the first ``fraction`` by sha256(seed, label)."""
    ids = sorted(set(labels.tolist()), key=lambda s: hashlib.sha256(f"{seed}:{s}".encode())
                 .hexdigest())
    return set(ids[: max(2, round(len(ids) * fraction))])


def calibrate(rows: list[dict], *, target: float = 0.01, seed: int = 0,
              aliases: dict[str, str] | None = None, embedder: str = "dlib",
              data: str = "") -> dict:
    """The preset dict: thresholds fitted on half the identities, rates on both halves."""
    if not 0 < target < 0.5:
        raise CalibrationError(f"target false-merge rate must be in (0, 0.5), got {target}")
    if not rows:
        raise CalibrationError("no labelled faces to calibrate on")
    emb, labels, pix, face = _arrays(rows, aliases or {})
    if len(set(labels.tolist())) < 4:
        raise CalibrationError(f"calibration needs at least 4 labelled identities, got "
                               f"{len(set(labels.tolist()))}")
    fit_ids = split_identities(labels, seed)
    fit = np.array([lab in fit_ids for lab in labels])
    d_fit = _distributions(emb[fit], labels[fit], pix[fit], face[fit], 0.12, seed)
    th = fit_thresholds(d_fit, target)
    d_held = _distributions(emb[~fit], labels[~fit], pix[~fit], face[~fit],
                            th["max_identity_distance"], seed)
    d_fit = _distributions(emb[fit], labels[fit], pix[fit], face[fit],
                           th["max_identity_distance"], seed)
    return {"embedder": embedder, "embedder_name": rows[0].get("embedder"),
            "target_false_merge": target, "seed": seed, "data": data,
            "aliases": aliases or {}, "thresholds": th,
            "fit": error_rates(d_fit, th), "held_out": error_rates(d_held, th),
            "fit_identities": sorted(fit_ids),
            "held_out_identities": sorted(set(labels.tolist()) - fit_ids)}
