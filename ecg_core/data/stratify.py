"""Multi-label iterative stratification: patient-level k folds and the two-part label-fraction split.

Sechidis, Tsoumakas & Vlahavas 2011, "On the stratification of multi-label data" (ECML PKDD), Algorithm 1:
every part ``p`` wants a share of the examples and, per label, the same share of that label's examples. The
label with the fewest examples still unassigned is dealt first (rare labels cannot be left over for the
last parts); each of its examples goes to the part that still wants most of that label, then the part that
still wants most examples, then a seeded coin. Examples without any label form a stratum of their own
(:data:`NO_LABEL`), so they are spread in proportion too.

Two users, one implementation:

* :func:`stratified_folds` deals whole *groups* (patients) into ``n_folds`` equal folds, so that every record
  of a patient shares its fold (the ingest of stores whose source gives no official folds, e.g. the
  PhysioNet/CinC Challenges). A group is one example whose label counts are the sums over its records and
  whose size is its number of records, so the targets stay in records.
* :func:`two_part_split` and :func:`cover_and_trim` are the record-level subset of
  :func:`ecg_core.evaluation.label_subset` (the label-fraction training records).

NumPy only (no torch): the ingest imports this module.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["NO_LABEL", "cover_and_trim", "folds_description", "iterative_stratification", "label_matrix",
           "stratified_folds", "two_part_split"]

NO_LABEL = "\x00no label"
"""Stratum of the examples that have no label of the task."""

_FOLDS_SEED_TAG = 0xF01D5   # mixed into the seed of stratified_folds (label_subset uses its own tag)


def label_matrix(label_lists: Sequence[Sequence[object]]) -> tuple[list[str], np.ndarray]:
    """``(strata, y_RS)``: the sorted label names (plus :data:`NO_LABEL` when some record has no label) and the
    bool (records, strata) membership matrix."""
    lists = [[str(x) for x in labels] or [NO_LABEL] for labels in label_lists]
    strata = sorted({label for labels in lists for label in labels})
    col = {s: j for j, s in enumerate(strata)}
    y_RS = np.zeros((len(lists), len(strata)), dtype=bool)
    for r, labels in enumerate(lists):
        y_RS[r, [col[label] for label in labels]] = True
    return strata, y_RS


def iterative_stratification(y_GS: np.ndarray, want_P: Sequence[float], rng: np.random.Generator,
                             size_G: np.ndarray | None = None) -> np.ndarray:
    """The part (0 .. P-1) of each example (row) of ``y_GS``; Sechidis et al.'s Algorithm 1.

    ``y_GS`` holds the label counts of each example (bool for single records; for a group, the number of its
    records with each label); every example needs at least one (use :data:`NO_LABEL` for unlabelled ones).
    ``want_P`` is how many records each part should get (summing to the total size); ``size_G`` the records
    per example (default 1 each). Ties after "most wanted label" and "most wanted records" are broken by
    ``rng``, which is the only source of randomness: the same inputs and generator state give the same parts.
    """
    y = np.asarray(y_GS)
    n = len(y)
    size = np.ones(n, dtype=np.float64) if size_G is None else np.asarray(size_G, dtype=np.float64)
    if size.shape != (n,):
        raise ValueError(f"size_G has shape {size.shape}, expected ({n},)")
    if n and not (y > 0).any(axis=1).all():
        raise ValueError("every example needs a label (put unlabelled ones in the NO_LABEL stratum)")
    total = size.sum()
    per_stratum = y.sum(axis=0).astype(np.float64)
    want_size = np.asarray(want_P, dtype=np.float64).copy()
    # per part: the stratum counts in the part's share (written as count * want / total, in this order, so
    # that the two-part split of label_subset keeps its exact floating-point values)
    want_label = np.stack([per_stratum * w / total for w in want_size]) if n else np.zeros((len(want_size), 0))
    remaining = per_stratum.copy()
    unassigned = np.ones(n, dtype=bool)
    part_G = np.full(n, -1, dtype=np.int64)
    while unassigned.any():
        live = np.flatnonzero(remaining > 0)
        fewest = live[remaining[live] == remaining[live].min()]
        label = int(rng.choice(fewest))
        rows = np.flatnonzero(unassigned & (y[:, label] > 0))
        for r in rows[rng.permutation(len(rows))]:
            wants = want_label[:, label]
            part = np.flatnonzero(wants == wants.max())
            if len(part) > 1:
                part = part[want_size[part] == want_size[part].max()]
            j = int(part[0] if len(part) == 1 else rng.choice(part))
            part_G[r] = j
            unassigned[r] = False
            want_label[j] -= y[r]
            want_size[j] -= size[r]
            remaining -= y[r]
    return part_G


def two_part_split(y_RS: np.ndarray, target: int, rng: np.random.Generator) -> np.ndarray:
    """Iterative stratification of single records into (subset of ``target`` records, rest); True for the
    subset's records."""
    n = len(y_RS)
    return iterative_stratification(y_RS, [target, n - target], rng) == 0


def _pick(scores: np.ndarray, candidates: np.ndarray, rng: np.random.Generator) -> int:
    """The candidate with the highest score (ties: a seeded choice)."""
    best = candidates[scores == scores.max()]
    return int(best[0] if len(best) == 1 else rng.choice(best))


def cover_and_trim(y_RS: np.ndarray, chosen: np.ndarray, target: int, real: np.ndarray, fraction: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Add records until every (real) class of the pool is in the subset, then bring the subset to ``target``
    records: add the most under-represented ones, or remove the most over-represented ones that no class
    needs."""
    chosen = chosen.copy()
    pool_has = y_RS.any(axis=0) & real
    while True:
        missing = pool_has & ~y_RS[chosen].any(axis=0)
        if not missing.any():
            break
        outside = np.flatnonzero(~chosen)
        cover = y_RS[outside][:, missing].sum(axis=1)
        chosen[_pick(cover, outside, rng)] = True
    desired = y_RS.sum(axis=0) * fraction
    while chosen.sum() < target:   # the stratification's greedy choices can fall a few records short
        count = y_RS[chosen].sum(axis=0)
        outside = np.flatnonzero(~chosen)
        lack = (y_RS[outside] * (desired - count)).sum(axis=1)
        chosen[_pick(lack, outside, rng)] = True
    while chosen.sum() > target:
        count = y_RS[chosen].sum(axis=0)
        inside = np.flatnonzero(chosen)
        # Removable: every real class of the record stays represented without it.
        keeps = ~(y_RS[inside] & real & (count <= 1)).any(axis=1)
        if not keeps.any():
            break
        inside = inside[keeps]
        excess = (y_RS[inside] * (count - desired)).sum(axis=1)
        chosen[_pick(excess, inside, rng)] = False
    return chosen


def stratified_folds(label_lists: Sequence[Sequence[object]], groups: Sequence[object], n_folds: int = 10,
                     seed: int = 0) -> np.ndarray:
    """Folds ``1 .. n_folds`` (int64, one per record) by iterative stratification over whole groups.

    ``label_lists[i]`` are record ``i``'s labels, ``groups[i]`` its patient: all records of a patient get the
    same fold. The folds want equal numbers of records and, per label, equal numbers of that label's
    records. Deterministic in ``(labels, groups, n_folds, seed)`` and independent of the record order (groups
    are dealt from their sorted ids).
    """
    if n_folds < 1:
        raise ValueError(f"n_folds must be >= 1, got {n_folds}")
    if len(label_lists) != len(groups):
        raise ValueError(f"{len(label_lists)} label lists but {len(groups)} group ids")
    if not len(groups):
        return np.zeros(0, dtype=np.int64)
    keys = np.asarray([str(g) for g in groups])
    group_ids, group_of = np.unique(keys, return_inverse=True)   # sorted ids: order-free
    _, y_RS = label_matrix(label_lists)
    y_GS = np.zeros((len(group_ids), y_RS.shape[1]), dtype=np.int64)
    np.add.at(y_GS, group_of, y_RS.astype(np.int64))
    size_G = np.bincount(group_of, minlength=len(group_ids)).astype(np.float64)
    want_P = np.full(n_folds, size_G.sum() / n_folds)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _FOLDS_SEED_TAG]))
    part_G = iterative_stratification(y_GS, want_P, rng, size_G)
    return part_G[group_of] + 1


def folds_description(labels: str, n_folds: int = 10, seed: int = 0, note: str = "") -> str:
    """The one-line record of how :func:`stratified_folds` made a store's folds (kept in its attributes)."""
    text = (f"iterative stratification (Sechidis et al. 2011) over {labels}, patient-level, {n_folds} folds, "
            f"seed {seed}")
    return f"{text}; {note}" if note else text
