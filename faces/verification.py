"""Identity-verification figures from embeddings: pair scores, ROC AUC, TAR at a FAR."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pair_scores(embeddings: np.ndarray, labels: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Cosine scores and same-identity flags for all unordered pairs (i < j)."""
    emb = np.asarray(embeddings, dtype=np.float64)
    lab = np.asarray(labels)
    if emb.ndim != 2 or len(emb) != len(lab):
        raise ValueError(f"need (N, D) embeddings and N labels, got {emb.shape} and {len(lab)}")
    sims = emb @ emb.T
    iu = np.triu_indices(len(emb), 1)
    return sims[iu], (lab[:, None] == lab[None, :])[iu]


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties)."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"need both positive and negative pairs, got {n_pos} and {n_neg}")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def tar_at_far(scores: np.ndarray, positive: np.ndarray, far: float = 0.01) -> tuple[float, float]:
    """(true-accept rate, threshold) at the strictest threshold whose false-accept rate <= far."""
    scores = np.asarray(scores, dtype=np.float64)
    positive = np.asarray(positive, dtype=bool)
    neg = np.sort(scores[~positive])[::-1]
    if len(neg) == 0 or positive.sum() == 0:
        raise ValueError("need both positive and negative pairs")
    k = int(np.floor(far * len(neg)))  # negatives allowed above the threshold
    # Accept scores strictly above the (k+1)-th highest negative score.
    thr = neg[k] if k < len(neg) else -np.inf
    return float((scores[positive] > thr).mean()), float(thr)
