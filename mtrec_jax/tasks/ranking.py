"""Exact next-item ranking metrics, computed on the host in NumPy.

A sequential recommender (e.g. SASRec) scores every item for each evaluation
row; these functions turn those scores into HR@K, NDCG@K and MRR over a whole
evaluation split, and compute group AUC for CTR-style tasks.

Conventions (the same for every function):

* Item ids lie in [0, num_items), like a feature's `vocab_size`: id 0 is the
  padding id and is never ranked, never sampled as a negative and never a
  target.  A score matrix is [N, num_items], column i holding the score of
  item i.
* Ranks are 0-based: rank 0 is the top of the list.
* History exclusion: the items in a row's `exclude` (the user's history,
  padded with 0) are removed from the candidates, as in the usual full-ranking
  protocol.  The target itself is never removed, even when it appears in the
  history: a re-consumed item stays rankable.
* Ties are broken at random, in expectation.  A target with `h` candidates
  scored strictly higher and `t` other candidates scored equal sits at a
  position uniform over h..h+t; every metric is the exact average over those
  t + 1 positions (the expected rank is h + t/2).  So a constant scorer gets
  the metrics of a random ranking, never free hits from ties.
* Scores of excluded items and of column 0 are never read (they may be
  anything, even NaN); a NaN among the ranked scores raises, since a diverged
  model must not get a number.  +-inf are ordinary scores.

Protocols:

* Full ranking (`full_ranking_metrics`): the target against every item the
  user has not interacted with.  Preferred: sampled metrics can rank models
  differently from full ones (Krichene & Rendle, "On Sampled Metrics for Item
  Recommendation", KDD 2020).
* Sampled ranking (`sample_negatives`, `sampled_ranking_metrics`): the target
  against 100 negatives drawn uniformly, without replacement, from the items
  the user has not interacted with, as in SASRec (Kang & McAuley,
  "Self-Attentive Sequential Recommendation", ICDM 2018, sec. IV-B).

Group AUC (`gauc`) follows DIN (Zhou et al., "Deep Interest Network for
Click-Through Rate Prediction", KDD 2018).
"""
from __future__ import annotations

from typing import Iterable, Literal, Optional

import numpy as np

DEFAULT_KS = (1, 5, 10, 20)

# SplitMix64 (Steele, Lea & Flood, OOPSLA 2014): a counter-based stream, so
# each row's random numbers depend only on (seed, row id, draw index).
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_SEED_SALT = np.uint64(0x5EED5A3D1E5A7C11)


# ----------------------------------------------------------------------------
# Input checks.


def _check_scores(scores) -> np.ndarray:
  scores = np.asarray(scores)
  if scores.dtype.kind not in "fiu":
    raise ValueError(f"scores must be real numbers, got dtype {scores.dtype}")
  if scores.ndim != 2 or scores.shape[1] < 2:
    raise ValueError(f"scores must have shape [N, num_items] with num_items "
                     f">= 2 (column 0 is the padding id), got {scores.shape}")
  return scores


def _as_ids(x, name: str) -> np.ndarray:
  """Integer item ids as int64 (integral floats are accepted)."""
  x = np.asarray(x)
  if x.dtype.kind not in "iu":
    if x.dtype.kind != "f" or not np.all(np.isfinite(x)) or not np.all(
        x == np.round(x)):
      raise ValueError(f"{name} must hold integer item ids, got dtype "
                       f"{x.dtype}")
  return x.astype(np.int64)


def _check_targets(targets, n: int, num_items: int) -> np.ndarray:
  targets = _as_ids(targets, "targets")
  if targets.shape != (n,):
    raise ValueError(f"targets must have shape [{n}] (one target item per "
                     f"row), got {targets.shape}")
  bad = (targets < 1) | (targets >= num_items)
  if bad.any():
    row = int(np.flatnonzero(bad)[0])
    raise ValueError(f"targets must lie in [1, {num_items}) (0 is the padding "
                     f"id); row {row} has target {int(targets[row])} "
                     f"({int(bad.sum())} rows out of range)")
  return targets


def _check_exclude(exclude, n: int, num_items: int) -> np.ndarray:
  """[N, M] ids in [0, num_items); None becomes [N, 0]."""
  if exclude is None:
    return np.zeros((n, 0), np.int64)
  exclude = _as_ids(exclude, "exclude")
  if exclude.ndim != 2 or exclude.shape[0] != n:
    raise ValueError(f"exclude must have shape [{n}, M] (item ids per row, "
                     f"padded with 0), got {exclude.shape}")
  bad = (exclude < 0) | (exclude >= num_items)
  if bad.any():
    row, col = (int(i[0]) for i in np.nonzero(bad))
    raise ValueError(f"exclude ids must lie in [0, {num_items}) (0 = "
                     f"padding); row {row} holds {int(exclude[row, col])}")
  return exclude


def _check_no_nan(ranked: np.ndarray, what: str) -> None:
  if ranked.dtype.kind == "f" and np.isnan(ranked).any():
    raise ValueError(f"scores are NaN at {int(np.isnan(ranked).sum())} "
                     f"{what}; a diverged model cannot be ranked")


def _check_ks(ks: Iterable[int]) -> tuple[int, ...]:
  ks = tuple(ks)
  for k in ks:
    _check_k(k)
  if len(set(ks)) != len(ks):
    raise ValueError(f"ks must not repeat a cutoff, got {ks}")
  return ks


def _check_k(k) -> int:
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"cutoff k must be an integer >= 1, got {k!r}")
  return int(k)


# ----------------------------------------------------------------------------
# Ranks.


def rank_counts(scores, targets,
                exclude=None) -> tuple[np.ndarray, np.ndarray]:
  """Where each target falls among its candidates, with ties kept apart.

  Args:
    scores: [N, num_items] scores over every item (column 0 = padding).
    targets: [N] target item ids in [1, num_items).
    exclude: optional [N, M] item ids to remove per row (the user's history),
      padded with 0.  The target is never removed, even if listed.

  Returns:
    (higher, tied), int64 [N] each: the number of candidates (items other
    than padding, the excluded ones and the target) scored strictly higher
    than the target, and the number scored equal to it.  The target's 0-based
    rank is uniform over higher..higher + tied under random tie-breaking;
    pass both to the metrics so they average over those positions exactly.
  """
  scores = _check_scores(scores)
  n, num_items = scores.shape
  targets = _check_targets(targets, n, num_items)
  exclude = _check_exclude(exclude, n, num_items)
  rows = np.arange(n)
  candidate = np.ones(scores.shape, bool)
  candidate[:, 0] = False
  candidate[rows[:, None], exclude] = False  # padding 0 hits column 0 only
  candidate[rows, targets] = False  # the target is not its own competitor
  target_score = scores[rows, targets]
  _check_no_nan(target_score, "targets")
  _check_no_nan(scores[candidate], "non-excluded items")
  target_score = target_score[:, None]
  higher = np.count_nonzero(candidate & (scores > target_score), axis=1)
  tied = np.count_nonzero(candidate & (scores == target_score), axis=1)
  return higher.astype(np.int64), tied.astype(np.int64)


def target_ranks(scores, targets, exclude=None) -> np.ndarray:
  """Expected 0-based rank of each target under random tie-breaking, [N].

  higher + tied / 2 (see `rank_counts`): a float, e.g. 2.5 for a target
  tied with one item below two better ones.  For metrics use the counts of
  `rank_counts`, not these ranks: HR and NDCG of the expected rank are not
  the expected HR and NDCG.
  """
  higher, tied = rank_counts(scores, targets, exclude)
  return higher + tied / 2.0


# ----------------------------------------------------------------------------
# Metrics of ranks (single target per row).


def _counts(ranks, tied) -> tuple[np.ndarray, np.ndarray]:
  """Checked int64 (higher, tied); tied=None means integer ranks, no ties."""
  ranks = np.asarray(ranks)
  if ranks.ndim != 1 or ranks.size == 0:
    raise ValueError(f"ranks must be a non-empty [N] array, got shape "
                     f"{ranks.shape}")
  if ranks.dtype.kind not in "iu" and not (
      ranks.dtype.kind == "f" and np.all(ranks == np.floor(ranks))):
    raise ValueError("ranks must be whole numbers; for ranks with ties pass "
                     "the counts of rank_counts: metric(higher, ..., "
                     "tied=tied)")
  higher = ranks.astype(np.int64)
  if tied is None:
    tied = np.zeros_like(higher)
  else:
    tied = np.asarray(tied)
    if tied.shape != higher.shape or tied.dtype.kind not in "iu":
      raise ValueError(f"tied must be integer counts of shape {higher.shape} "
                       f"(from rank_counts), got {tied.dtype} {tied.shape}")
    tied = tied.astype(np.int64)
  if higher.min() < 0 or tied.min() < 0:
    raise ValueError("ranks and tie counts must be >= 0")
  return higher, tied


def _expected_over_positions(higher: np.ndarray, tied: np.ndarray,
                             gain_prefix: np.ndarray,
                             gain: np.ndarray) -> float:
  """Mean over rows of the average gain over positions higher..higher+tied.

  `gain_prefix[p]` is the sum of the gains of positions < p, for p up to
  len(gain_prefix) - 1; positions past that have gain 0.  Rows without ties
  use `gain` directly, so their values are exact (no prefix differences).
  """
  last = len(gain_prefix) - 1
  lo = np.minimum(higher, last)
  hi = np.minimum(higher + tied + 1, last)
  averaged = (gain_prefix[hi] - gain_prefix[lo]) / (tied + 1)
  single = np.zeros(higher.shape)
  inside = higher < len(gain)
  single[inside] = gain[higher[inside]]
  return float(np.mean(np.where(tied == 0, single, averaged)))


def hit_rate_at_k(ranks, k: int, tied=None) -> float:
  """HR@K = mean over rows of [rank < k] (one target per row).

  `ranks` are integer 0-based ranks; to average over tie-breaking pass the
  `higher` counts of `rank_counts` as `ranks` and its `tied` counts as `tied`.
  """
  k = _check_k(k)
  higher, tied = _counts(ranks, tied)
  inside = np.clip(k - higher, 0, tied + 1)  # tie positions that are < k
  return float(np.mean(inside / (tied + 1)))


def ndcg_at_k(ranks, k: int, tied=None) -> float:
  """NDCG@K = mean over rows of [rank < k] / log2(rank + 2).

  With one relevant item the ideal DCG is 1, so this is the DCG of the
  target.  `ranks` and `tied` as in `hit_rate_at_k`.
  """
  k = _check_k(k)
  higher, tied = _counts(ranks, tied)
  gain = 1.0 / np.log2(np.arange(k) + 2.0)
  prefix = np.concatenate([[0.0], np.cumsum(gain)])
  return _expected_over_positions(higher, tied, prefix, gain)


def mrr(ranks, tied=None) -> float:
  """MRR = mean over rows of 1 / (rank + 1), over the full list (no cutoff).

  `ranks` and `tied` as in `hit_rate_at_k`.
  """
  higher, tied = _counts(ranks, tied)
  length = int((higher + tied).max()) + 1
  gain = 1.0 / np.arange(1.0, length + 1.0)
  prefix = np.concatenate([[0.0], np.cumsum(gain)])
  return _expected_over_positions(higher, tied, prefix, gain)


def _metrics_from_counts(higher: np.ndarray, tied: np.ndarray,
                         ks: tuple[int, ...]) -> dict[str, float]:
  if higher.size == 0:
    raise ValueError("no rows to evaluate: scores has 0 rows")
  out = {}
  for k in ks:
    out[f"hr@{k}"] = hit_rate_at_k(higher, k, tied)
    out[f"ndcg@{k}"] = ndcg_at_k(higher, k, tied)
  out["mrr"] = mrr(higher, tied)
  return out


def full_ranking_metrics(scores, targets, exclude=None,
                         ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
  """HR@K, NDCG@K for each K in `ks`, and MRR, ranking against all items.

  Each target competes with every item except padding and the row's
  `exclude` (history); ties are averaged over (see the module docstring).
  Returns {'hr@1': ..., 'ndcg@1': ..., ..., 'mrr': ...}.
  """
  ks = _check_ks(ks)
  higher, tied = rank_counts(scores, targets, exclude)
  return _metrics_from_counts(higher, tied, ks)


# ----------------------------------------------------------------------------
# Sampled protocol (SASRec).


def _mix64(x: np.ndarray) -> np.ndarray:
  """The SplitMix64 output function: a bijection of uint64 (wrapping)."""
  x = (x ^ (x >> np.uint64(30))) * _MIX1
  x = (x ^ (x >> np.uint64(27))) * _MIX2
  return x ^ (x >> np.uint64(31))


def _uniform_below(state: np.ndarray, draw: int,
                   bound: np.ndarray) -> np.ndarray:
  """Draw number `draw` of each row's stream, as an int in [0, bound)."""
  step = np.uint64((draw + 1) * int(_GOLDEN) % 2**64)  # wraps like uint64
  bits = _mix64(state + step)
  unit = (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53  # [0, 1)
  # The bias of floor(unit * bound) is below bound / 2**53; the minimum
  # guards against rounding up to `bound` itself.
  return np.minimum((unit * bound).astype(np.int64), bound - 1)


def sample_negatives(targets, exclude, num_items: int,
                     num_negatives: int = 100, seed: int = 0, *,
                     row_ids=None) -> np.ndarray:
  """Negatives per row for the sampled protocol of SASRec (ICDM 2018).

  Each row gets `num_negatives` distinct items drawn uniformly, without
  replacement, from the items the user has not interacted with: never
  padding 0, never the target, never an item of `exclude`.

  Randomness is per row: row r draws from a SplitMix64 stream keyed by
  (seed, row_ids[r]), so its negatives depend only on the seed, its row id
  and its own target and history, never on which other rows are passed with
  it or in what order.  When sampling a split in batches, pass each row's
  global id (its position in the split, or a user id) as `row_ids`.

  Args:
    targets: [N] target item ids in [1, num_items).
    exclude: [N, M] the users' histories, padded with 0 (or None).
    num_items: size of the item vocabulary, ids in [0, num_items) (the number
      of score columns).
    num_negatives: negatives per row (100 in SASRec).
    seed: a non-negative integer.
    row_ids: optional [N] non-negative integers; defaults to 0..N-1.

  Returns:
    int64 [N, num_negatives] item ids, ascending within each row (the order
    carries no meaning: ranking among a set does not depend on it).
  """
  if isinstance(num_items, bool) or not isinstance(num_items,
                                                   (int, np.integer)):
    raise ValueError(f"num_items must be an integer, got {num_items!r}")
  if num_items < 2:
    raise ValueError(f"num_items must be >= 2 (id 0 is padding), got "
                     f"{num_items}")
  if (isinstance(num_negatives, bool) or
      not isinstance(num_negatives, (int, np.integer)) or num_negatives < 1):
    raise ValueError(f"num_negatives must be an integer >= 1, got "
                     f"{num_negatives!r}")
  if (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or
      not 0 <= seed < 2**64):
    raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
  num_items, num_negatives = int(num_items), int(num_negatives)
  targets = _as_ids(targets, "targets")
  if targets.ndim != 1:
    raise ValueError(f"targets must have shape [N], got {targets.shape}")
  n = targets.shape[0]
  targets = _check_targets(targets, n, num_items)
  exclude = _check_exclude(exclude, n, num_items)
  if row_ids is None:
    row_ids = np.arange(n, dtype=np.int64)
  else:
    row_ids = _as_ids(row_ids, "row_ids")
    if row_ids.shape != (n,) or (n and row_ids.min() < 0):
      raise ValueError(f"row_ids must be [{n}] non-negative integers, got "
                       f"shape {row_ids.shape}")

  # Each row's forbidden items: its history and target, deduplicated, no 0.
  forbidden = np.sort(np.concatenate([exclude, targets[:, None]], axis=1),
                      axis=1)
  distinct = np.ones(forbidden.shape, bool)
  distinct[:, 1:] = forbidden[:, 1:] != forbidden[:, :-1]
  distinct &= forbidden != 0
  num_forbidden = distinct.sum(axis=1)
  num_allowed = num_items - 1 - num_forbidden
  short = num_allowed < num_negatives
  if short.any():
    row = int(np.flatnonzero(short)[0])
    raise ValueError(
        f"{int(short.sum())} rows have fewer than num_negatives="
        f"{num_negatives} unseen items (row {row} has {int(num_allowed[row])} "
        f"of {num_items - 1}); lower num_negatives or use full ranking")

  # Floyd's algorithm, vectorised over rows: a uniform num_negatives-subset
  # of the indices 0..num_allowed-1 of each row's allowed items.
  state = _mix64(_mix64(np.full(n, seed, np.uint64) ^ _SEED_SALT) +
                 row_ids.astype(np.uint64))
  picked = np.empty((n, num_negatives), np.int64)
  for step in range(num_negatives):
    top = num_allowed - num_negatives + step
    draw = _uniform_below(state, step, top + 1)
    seen = (picked[:, :step] == draw[:, None]).any(axis=1)
    picked[:, step] = np.where(seen, top, draw)

  # Allowed index j -> item id: j + 1 plus the number of forbidden items at
  # or below it.  A forbidden item f (the r-th of its row) has f - 1 - r
  # allowed items below it; searching j among those per-row counts (offset
  # by row so all rows share one sorted array) gives that number.
  rank = np.cumsum(distinct, axis=1) - 1
  row_offset = np.arange(n, dtype=np.int64)[:, None] * num_items
  below = (row_offset + forbidden - 1 - rank)[distinct]
  row_start = np.cumsum(num_forbidden) - num_forbidden
  found = np.searchsorted(below, (row_offset + picked).ravel(), side="right")
  items = picked + 1 + found.reshape(picked.shape) - row_start[:, None]
  return np.sort(items, axis=1)


def sampled_ranking_metrics(scores, targets, negatives,
                            ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
  """HR@K, NDCG@K and MRR ranking each target among its negatives only.

  Args:
    scores: [N, num_items] scores over every item (only the targets' and the
      negatives' columns are read).
    targets: [N] target item ids.
    negatives: [N, K] distinct item ids per row, none equal to the target or
      0 (e.g. from `sample_negatives`).
    ks: cutoffs.

  Same keys and tie convention as `full_ranking_metrics`; ranks lie in
  [0, K].
  """
  ks = _check_ks(ks)
  scores = _check_scores(scores)
  n, num_items = scores.shape
  targets = _check_targets(targets, n, num_items)
  negatives = _as_ids(negatives, "negatives")
  if negatives.ndim != 2 or negatives.shape[0] != n or negatives.shape[1] < 1:
    raise ValueError(f"negatives must have shape [{n}, K] with K >= 1, got "
                     f"{negatives.shape}")
  if ((negatives < 1) | (negatives >= num_items)).any():
    raise ValueError(f"negatives must lie in [1, {num_items}) (0 is the "
                     f"padding id)")
  if (negatives == targets[:, None]).any():
    raise ValueError("negatives must not contain the row's target; sample "
                     "them with sample_negatives")
  ordered = np.sort(negatives, axis=1)
  if (ordered[:, 1:] == ordered[:, :-1]).any():
    raise ValueError("negatives must be distinct within each row; sample "
                     "them without replacement (sample_negatives)")
  rows = np.arange(n)
  target_score = scores[rows, targets]
  negative_score = scores[rows[:, None], negatives]
  _check_no_nan(target_score, "targets")
  _check_no_nan(negative_score, "negatives")
  higher = np.count_nonzero(negative_score > target_score[:, None], axis=1)
  tied = np.count_nonzero(negative_score == target_score[:, None], axis=1)
  return _metrics_from_counts(higher.astype(np.int64), tied.astype(np.int64),
                              ks)


# ----------------------------------------------------------------------------
# Group AUC (DIN).


def gauc(scores, labels, groups,
         weighting: Literal["impressions", "uniform"] = "impressions") -> float:
  """Group AUC of DIN (Zhou et al., KDD 2018).

  The binary AUC of each group (usually a user), ties between a positive and
  a negative counting 1/2, averaged over the groups that have both a positive
  and a negative label; single-class groups have no AUC and are skipped.
  `weighting`: 'impressions' weights a group by its number of examples, as
  in DIN; 'uniform' weights every group equally.

  Args:
    scores: [N] real scores (NaN raises).
    labels: [N] 0/1 labels.
    groups: [N] group keys (any sortable values, e.g. user ids).
  """
  if weighting not in ("impressions", "uniform"):
    raise ValueError(f"weighting must be 'impressions' or 'uniform', got "
                     f"{weighting!r}")
  scores = np.asarray(scores)
  labels = np.asarray(labels)
  groups = np.asarray(groups)
  if scores.dtype.kind not in "fiu":
    raise ValueError(f"scores must be real numbers, got dtype {scores.dtype}")
  if scores.ndim != 1 or labels.shape != scores.shape or (
      groups.shape != scores.shape):
    raise ValueError(f"scores, labels and groups must all have shape [N]; got "
                     f"{scores.shape}, {labels.shape}, {groups.shape}")
  _check_no_nan(scores, "examples")
  if not np.all((labels == 0) | (labels == 1)):
    raise ValueError("labels must be 0 or 1")
  labels = labels.astype(np.float64)
  _, group = np.unique(groups, return_inverse=True)
  group = group.reshape(-1)
  num_groups = int(group.max()) + 1 if group.size else 0

  # Sort by group, then score; a segment is a run of equal (group, score).
  order = np.lexsort((scores, group))
  group, score, label = group[order], scores[order], labels[order]
  new = np.ones(group.shape, bool)
  new[1:] = (group[1:] != group[:-1]) | (score[1:] != score[:-1])
  starts = np.flatnonzero(new)
  seg_group = group[starts]
  seg_pos = np.add.reduceat(label, starts) if starts.size else label
  seg_neg = np.add.reduceat(1.0 - label, starts) if starts.size else label
  pos = np.bincount(group, weights=label, minlength=num_groups)
  neg = np.bincount(group, weights=1.0 - label, minlength=num_groups)
  # Negatives below a segment in its own group: all negatives before it minus
  # those of earlier groups.
  neg_before_group = np.cumsum(neg) - neg
  neg_below = np.cumsum(seg_neg) - seg_neg - neg_before_group[seg_group]
  wins = np.bincount(seg_group, weights=seg_pos * (neg_below + 0.5 * seg_neg),
                     minlength=num_groups)
  valid = (pos > 0) & (neg > 0)
  if not valid.any():
    raise ValueError(f"no group has both a positive and a negative label "
                     f"({num_groups} groups), so GAUC is undefined; check the "
                     f"labels and the group keys")
  auc = wins[valid] / (pos[valid] * neg[valid])
  weight = (pos + neg)[valid] if weighting == "impressions" else np.ones(
      int(valid.sum()))
  return float(np.sum(weight * auc) / np.sum(weight))
