"""Ranking metrics, sampled negatives and GAUC against plain-loop references."""
from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np
import pytest

from mtrec_jax.tasks import ranking

# ----------------------------------------------------------------------------
# Independent references (Python loops over rows and items).


def brute_counts(scores, targets, exclude):
  """(higher, tied) per row by looping over every item id."""
  higher, tied = [], []
  for row, target in enumerate(targets):
    history = set() if exclude is None else set(exclude[row].tolist())
    h = t = 0
    for item in range(1, scores.shape[1]):
      if item == target or item in history:
        continue
      if scores[row, item] > scores[row, target]:
        h += 1
      elif scores[row, item] == scores[row, target]:
        t += 1
    higher.append(h)
    tied.append(t)
  return np.array(higher), np.array(tied)


def hr_at(position, k):
  return 1.0 if position < k else 0.0


def ndcg_at(position, k):
  return 1.0 / math.log2(position + 2) if position < k else 0.0


def rr_at(position, k=None):
  return 1.0 / (position + 1)


def brute_metric(higher, tied, metric, k=None):
  """Mean over rows of the metric averaged over positions h..h+t."""
  per_row = []
  for h, t in zip(higher, tied):
    positions = range(h, h + t + 1)
    per_row.append(sum(metric(p, k) for p in positions) / len(positions))
  return sum(per_row) / len(per_row)


def brute_all(higher, tied, ks):
  out = {}
  for k in ks:
    out[f"hr@{k}"] = brute_metric(higher, tied, hr_at, k)
    out[f"ndcg@{k}"] = brute_metric(higher, tied, ndcg_at, k)
  out["mrr"] = brute_metric(higher, tied, rr_at)
  return out


def brute_auc(score, label):
  num = den = 0.0
  for i in range(len(score)):
    for j in range(len(score)):
      if label[i] == 1 and label[j] == 0:
        den += 1
        if score[i] > score[j]:
          num += 1.0
        elif score[i] == score[j]:
          num += 0.5
  return num / den


def brute_gauc(scores, labels, groups, weighting):
  num = den = 0.0
  for g in set(groups.tolist()):
    idx = [i for i in range(len(groups)) if groups[i] == g]
    lab = [labels[i] for i in idx]
    if 0 < sum(lab) < len(lab):
      w = len(idx) if weighting == "impressions" else 1.0
      num += w * brute_auc([scores[i] for i in idx], lab)
      den += w
  return num / den


def tie_data(seed, n=40, num_items=30, levels=4, history=8):
  """Integer-valued scores (many ties), targets, histories with padding."""
  rng = np.random.default_rng(seed)
  scores = rng.integers(0, levels, (n, num_items)).astype(np.float64)
  targets = rng.integers(1, num_items, n)
  exclude = rng.integers(1, num_items, (n, history))
  exclude[rng.random((n, history)) < 0.3] = 0  # padding
  exclude[: n // 4, 0] = targets[: n // 4]  # re-consumed targets
  return scores, targets, exclude


# ----------------------------------------------------------------------------
# Ranks.


@pytest.mark.parametrize("seed", range(4))
def test_rank_counts_match_loops(seed):
  scores, targets, exclude = tie_data(seed, levels=3 + seed)
  for excl in (exclude, None):
    higher, tied = ranking.rank_counts(scores, targets, excl)
    ref_higher, ref_tied = brute_counts(scores, targets, excl)
    np.testing.assert_array_equal(higher, ref_higher)
    np.testing.assert_array_equal(tied, ref_tied)
    assert higher.dtype == tied.dtype == np.int64
    np.testing.assert_array_equal(
        ranking.target_ranks(scores, targets, excl), ref_higher + ref_tied / 2)


def test_rank_counts_accept_integer_scores_and_float_ids():
  scores, targets, exclude = tie_data(9)
  expected = ranking.rank_counts(scores, targets, exclude)
  got = ranking.rank_counts(scores.astype(np.int32), targets.astype(float),
                            exclude.astype(float))
  np.testing.assert_array_equal(got, expected)


def test_exclusion_padding_and_reconsumed_target():
  #                    pad  1    2    3    4    5
  scores = np.array([[99., 5.0, 9.0, 1.0, 8.0, 5.0]])
  target = np.array([1])
  # Nothing excluded: items 2 and 4 are higher, item 5 ties; column 0 (the
  # padding id) never counts however high it scores.
  np.testing.assert_array_equal(ranking.rank_counts(scores, target), ([2], [1]))
  # Excluding 2 and 5 removes a higher and a tied item; 0 is padding; the
  # target's own id in the history keeps it rankable.
  exclude = np.array([[2, 0, 1, 5, 0]])
  np.testing.assert_array_equal(ranking.rank_counts(scores, target, exclude),
                                ([1], [0]))
  assert ranking.target_ranks(scores, target, exclude)[0] == 1.0
  # Scores that are never read may be NaN: padding and excluded items.
  scores[0, 0] = scores[0, 2] = np.nan
  np.testing.assert_array_equal(ranking.rank_counts(scores, target, exclude),
                                ([1], [0]))


def test_expected_rank_of_a_tie():
  scores = np.array([[0.0, 3.0, 3.0, 5.0, 3.0, 1.0]])
  assert ranking.target_ranks(scores, np.array([2]))[0] == 1 + 2 / 2


# ----------------------------------------------------------------------------
# Metrics of ranks.


def test_hand_computed_metrics():
  top = np.array([0])
  assert ranking.hit_rate_at_k(top, 1) == 1.0
  assert ranking.ndcg_at_k(top, 1) == 1.0
  assert ranking.ndcg_at_k(top, 10) == 1.0
  assert ranking.mrr(top) == 1.0
  third = np.array([2])
  assert ranking.hit_rate_at_k(third, 1) == 0.0
  assert ranking.hit_rate_at_k(third, 2) == 0.0
  assert ranking.hit_rate_at_k(third, 3) == 1.0
  assert ranking.ndcg_at_k(third, 10) == 0.5  # 1 / log2(4)
  assert ranking.ndcg_at_k(third, 2) == 0.0
  assert ranking.mrr(third) == pytest.approx(1 / 3, abs=1e-15)
  both = np.array([0, 2])
  assert ranking.ndcg_at_k(both, 10) == 0.75
  assert ranking.hit_rate_at_k(both, 1) == 0.5
  # One higher item and one tie: positions 1 and 2, each with probability 1/2.
  higher, tied = np.array([1]), np.array([1])
  assert ranking.hit_rate_at_k(higher, 2, tied) == 0.5
  assert ranking.hit_rate_at_k(higher, 3, tied) == 1.0
  assert ranking.ndcg_at_k(higher, 10, tied) == pytest.approx(
      (1 / math.log2(3) + 0.5) / 2, abs=1e-15)
  assert ranking.mrr(higher, tied) == pytest.approx((1 / 2 + 1 / 3) / 2,
                                                    abs=1e-15)


@pytest.mark.parametrize("seed", range(3))
def test_metrics_match_average_over_tie_positions(seed):
  scores, targets, exclude = tie_data(10 + seed, n=60, levels=2 + seed)
  higher, tied = ranking.rank_counts(scores, targets, exclude)
  for k in (1, 2, 3, 5, 10, 50):
    assert ranking.hit_rate_at_k(higher, k, tied) == pytest.approx(
        brute_metric(higher, tied, hr_at, k), abs=1e-12)
    assert ranking.ndcg_at_k(higher, k, tied) == pytest.approx(
        brute_metric(higher, tied, ndcg_at, k), abs=1e-12)
  assert ranking.mrr(higher, tied) == pytest.approx(
      brute_metric(higher, tied, rr_at), abs=1e-12)
  # Without ties the counts are plain ranks.
  rank = np.random.default_rng(seed).integers(0, 30, 50)
  for k in (1, 4, 10):
    assert ranking.hit_rate_at_k(rank, k) == pytest.approx(
        np.mean([hr_at(p, k) for p in rank]), abs=1e-15)
    assert ranking.ndcg_at_k(rank, k) == pytest.approx(
        np.mean([ndcg_at(p, k) for p in rank]), abs=1e-15)
  assert ranking.mrr(rank) == pytest.approx(np.mean([rr_at(p) for p in rank]),
                                            abs=1e-15)


def test_tie_expectation_equals_enumerating_tie_break_orders():
  # Candidates and target (item 3); items 2, 3, 5, 6 tie; item 4 is excluded.
  scores = np.array([[7.0, 1.0, 4.0, 4.0, 9.0, 4.0, 4.0, 6.0]])
  target, exclude = 3, {4}
  items = [i for i in range(1, 8) if i not in exclude]
  totals = Counter()
  orders = 0
  for order in itertools.permutations(items):
    listed = [scores[0, i] for i in order]
    if any(a < b for a, b in zip(listed, listed[1:])):
      continue  # not a descending order of the scores
    orders += 1
    position = order.index(target)
    for k in (1, 2, 3, 4, 5):
      totals[f"hr@{k}"] += hr_at(position, k)
      totals[f"ndcg@{k}"] += ndcg_at(position, k)
    totals["mrr"] += rr_at(position)
  assert orders == math.factorial(4)
  got = ranking.full_ranking_metrics(scores, np.array([target]),
                                     np.array([[4, 0]]), ks=(1, 2, 3, 4, 5))
  assert got.keys() == totals.keys()
  for key, value in totals.items():
    assert got[key] == pytest.approx(value / orders, abs=1e-14), key


def test_constant_scorer_gets_random_ranking_metrics():
  num_items, n = 51, 7
  scores = np.zeros((n, num_items))
  targets = np.arange(1, n + 1)
  got = ranking.full_ranking_metrics(scores, targets, ks=(1, 10))
  candidates = num_items - 1  # target included
  assert got["hr@1"] == pytest.approx(1 / candidates, abs=1e-15)
  assert got["hr@10"] == pytest.approx(10 / candidates, abs=1e-15)
  assert got["mrr"] == pytest.approx(
      sum(1 / p for p in range(1, candidates + 1)) / candidates, abs=1e-14)


@pytest.mark.parametrize("seed", range(3))
def test_full_ranking_metrics_match_loops(seed):
  scores, targets, exclude = tie_data(20 + seed, levels=3 + 2 * seed)
  got = ranking.full_ranking_metrics(scores, targets, exclude)
  assert list(got) == ["hr@1", "ndcg@1", "hr@5", "ndcg@5", "hr@10", "ndcg@10",
                       "hr@20", "ndcg@20", "mrr"]
  expected = brute_all(*brute_counts(scores, targets, exclude),
                       ranking.DEFAULT_KS)
  for key in expected:
    assert got[key] == pytest.approx(expected[key], abs=1e-12), key
  assert all(isinstance(v, float) for v in got.values())


# ----------------------------------------------------------------------------
# Sampled negatives.


def test_sampled_negatives_avoid_target_history_and_padding():
  rng = np.random.default_rng(0)
  num_items, n = 300, 64
  targets = rng.integers(1, num_items, n)
  exclude = rng.integers(0, num_items, (n, 120))
  exclude[:10, 5] = targets[:10]
  negatives = ranking.sample_negatives(targets, exclude, num_items)
  assert negatives.shape == (n, 100) and negatives.dtype == np.int64
  for row in range(n):
    values = negatives[row].tolist()
    assert len(set(values)) == 100
    assert values == sorted(values)
    forbidden = set(exclude[row].tolist()) | {0, int(targets[row])}
    assert not forbidden & set(values)
    assert all(1 <= v < num_items for v in values)


def test_sampled_negatives_are_deterministic_per_seed_and_row():
  rng = np.random.default_rng(1)
  num_items, n = 500, 40
  targets = rng.integers(1, num_items, n)
  exclude = rng.integers(0, num_items, (n, 30))
  full = ranking.sample_negatives(targets, exclude, num_items, 50, seed=3)
  np.testing.assert_array_equal(
      full, ranking.sample_negatives(targets, exclude, num_items, 50, seed=3))
  # Any subset of rows, in any order, with their row ids: the same negatives.
  rows = rng.permutation(n)[:13]
  part = ranking.sample_negatives(targets[rows], exclude[rows], num_items, 50,
                                  seed=3, row_ids=rows)
  np.testing.assert_array_equal(part, full[rows])
  # A different seed gives different negatives (for every row here).
  other = ranking.sample_negatives(targets, exclude, num_items, 50, seed=4)
  assert all((other[r] != full[r]).any() for r in range(n))
  # Identical rows with different row ids get different negatives.
  same = ranking.sample_negatives(np.full(5, 7), None, num_items, 20)
  assert len({tuple(r) for r in same.tolist()}) == 5


def test_sampled_negatives_take_every_unseen_item_when_just_enough():
  num_items = 12
  targets = np.array([3, 11])
  exclude = np.array([[1, 2, 0, 5, 3], [11, 4, 4, 9, 10]])  # 4 repeated
  negatives = ranking.sample_negatives(targets, exclude, num_items, 7)
  np.testing.assert_array_equal(negatives[0], [4, 6, 7, 8, 9, 10, 11])
  np.testing.assert_array_equal(negatives[1], [1, 2, 3, 5, 6, 7, 8])


def test_sampled_negatives_are_uniform_subsets():
  # Allowed items {2, 4, 5, 6} (target 1, history 3): 6 pairs, equally likely.
  n = 12000
  targets = np.ones(n, np.int64)
  exclude = np.tile([[3, 0]], (n, 1))
  negatives = ranking.sample_negatives(targets, exclude, 7, 2, seed=11)
  counts = Counter(map(tuple, negatives.tolist()))
  assert set(counts) == set(itertools.combinations([2, 4, 5, 6], 2))
  expected = n / 6
  chi2 = sum((c - expected)**2 / expected for c in counts.values())
  assert chi2 < 25  # 5 degrees of freedom: p < 1e-4 would fail
  # Large catalogue, sparse history: each unseen item is drawn K/A of the time.
  num_items, k = 1000, 100
  targets = np.full(400, 1)
  history = np.tile(np.arange(2, 201), (400, 1))  # items 2..200 seen
  negatives = ranking.sample_negatives(targets, history, num_items, k, seed=5)
  freq = np.bincount(negatives.ravel(), minlength=num_items)
  assert freq[:201].sum() == 0
  expected = 400 * k / (num_items - 201)
  chi2 = np.sum((freq[201:] - expected)**2 / expected)
  assert chi2 < 799 + 6 * math.sqrt(2 * 799)  # mean dof, 6 standard deviations


def test_sampled_ranking_metrics_match_loops():
  rng = np.random.default_rng(6)
  num_items, n = 200, 50
  scores = rng.integers(0, 6, (n, num_items)).astype(np.float64)
  targets = rng.integers(1, num_items, n)
  exclude = rng.integers(0, num_items, (n, 20))
  negatives = ranking.sample_negatives(targets, exclude, num_items, 30, seed=1)
  higher = [sum(scores[r, j] > scores[r, targets[r]] for j in negatives[r])
            for r in range(n)]
  tied = [sum(scores[r, j] == scores[r, targets[r]] for j in negatives[r])
          for r in range(n)]
  expected = brute_all(higher, tied, (1, 5, 10))
  got = ranking.sampled_ranking_metrics(scores, targets, negatives,
                                        ks=(1, 5, 10))
  assert got.keys() == expected.keys()
  for key in expected:
    assert got[key] == pytest.approx(expected[key], abs=1e-12), key


def test_sampled_ranking_hand_example():
  scores = np.array([[np.nan, 0.9, 0.5, 0.1, 0.7, 0.3]])  # NaN: unread column
  got = ranking.sampled_ranking_metrics(scores, np.array([2]),
                                        np.array([[3, 4, 5]]), ks=(1, 2))
  # Only item 4 scores higher: rank 1 among the target and its 3 negatives.
  assert got == {"hr@1": 0.0, "ndcg@1": 0.0, "hr@2": 1.0,
                 "ndcg@2": 1 / math.log2(3), "mrr": 0.5}


# ----------------------------------------------------------------------------
# GAUC.


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("weighting", ["impressions", "uniform"])
def test_gauc_matches_per_group_loops(seed, weighting):
  rng = np.random.default_rng(30 + seed)
  n = 200
  scores = rng.integers(0, 4, n) / 3  # ties within groups
  labels = (rng.random(n) < 0.3).astype(np.float64)
  groups = rng.integers(0, 25, n) * 7 + 3  # arbitrary, unsorted keys
  labels[groups == groups[0]] = 1.0  # a single-class group: skipped
  assert ranking.gauc(scores, labels, groups, weighting) == pytest.approx(
      brute_gauc(scores, labels, groups, weighting), abs=1e-12)


def test_gauc_hand_example_and_string_groups():
  scores = np.array([0.9, 0.1, 0.5, 0.5, 0.2, 0.8, 0.4])
  labels = np.array([1, 0, 1, 0, 0, 1, 1])
  groups = np.array(["a", "a", "b", "b", "b", "c", "c"])
  # a: 1.0 (2 examples); b: (1 tie / 2 + 1 win) / 2 = 0.75 (3); c: no negative.
  assert ranking.gauc(scores, labels, groups) == pytest.approx(
      (2 * 1.0 + 3 * 0.75) / 5, abs=1e-15)
  assert ranking.gauc(scores, labels, groups, "uniform") == pytest.approx(
      0.875, abs=1e-15)


# ----------------------------------------------------------------------------
# Errors.


def test_rank_input_errors():
  scores, targets, exclude = tie_data(0, n=4, num_items=6)
  with pytest.raises(ValueError, match="shape"):
    ranking.rank_counts(scores[0], targets)
  with pytest.raises(ValueError, match="num_items >= 2"):
    ranking.rank_counts(scores[:, :1], targets)
  with pytest.raises(ValueError, match="targets must have shape"):
    ranking.rank_counts(scores, targets[:3])
  with pytest.raises(ValueError, match=r"targets must lie in \[1, 6\)"):
    ranking.rank_counts(scores, np.array([1, 0, 2, 3]))
  with pytest.raises(ValueError, match="targets must lie"):
    ranking.rank_counts(scores, np.array([1, 6, 2, 3]))
  with pytest.raises(ValueError, match="integer item ids"):
    ranking.rank_counts(scores, np.array([1.5, 1, 2, 3]))
  with pytest.raises(ValueError, match="exclude must have shape"):
    ranking.rank_counts(scores, targets, exclude[:2])
  with pytest.raises(ValueError, match="exclude ids must lie"):
    ranking.rank_counts(scores, targets, np.full((4, 2), 6))
  bad = scores.copy()
  bad[1, 1 if targets[1] != 1 else 2] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    ranking.rank_counts(bad, targets)
  bad = scores.copy()
  bad[0, targets[0]] = np.nan
  with pytest.raises(ValueError, match="NaN at 1 targets"):
    ranking.full_ranking_metrics(bad, targets, exclude)
  with pytest.raises(ValueError, match="real numbers"):
    ranking.rank_counts(scores.astype(str), targets)


def test_metric_input_errors():
  with pytest.raises(ValueError, match="whole numbers"):
    ranking.hit_rate_at_k(np.array([0.5, 1.0]), 5)
  with pytest.raises(ValueError, match="tied must be integer counts"):
    ranking.ndcg_at_k(np.array([0, 1]), 5, tied=np.array([1]))
  with pytest.raises(ValueError, match="non-empty"):
    ranking.mrr(np.array([], np.int64))
  with pytest.raises(ValueError, match=">= 0"):
    ranking.mrr(np.array([-1, 2]))
  for k in (0, 2.0, True):
    with pytest.raises(ValueError, match="cutoff k"):
      ranking.hit_rate_at_k(np.array([1]), k)
  scores, targets, _ = tie_data(0, n=4, num_items=6)
  with pytest.raises(ValueError, match="must not repeat"):
    ranking.full_ranking_metrics(scores, targets, ks=(5, 5))
  with pytest.raises(ValueError, match="no rows"):
    ranking.full_ranking_metrics(np.zeros((0, 6)), np.zeros(0, np.int64))
  with pytest.raises(ValueError, match="no rows"):
    ranking.sampled_ranking_metrics(np.zeros((0, 6)), np.zeros(0, np.int64),
                                    np.zeros((0, 3), np.int64))


def test_sampling_errors():
  targets = np.array([1, 2])
  exclude = np.array([[3, 4, 5], [3, 0, 0]])
  with pytest.raises(ValueError, match=r"1 rows have fewer than num_negatives="
                     r"3 unseen items \(row 0 has 2 of 6\)"):
    ranking.sample_negatives(targets, exclude, 7, 3)
  assert ranking.sample_negatives(targets, exclude, 7, 2).shape == (2, 2)
  with pytest.raises(ValueError, match="num_items must be >= 2"):
    ranking.sample_negatives(targets, exclude, 1, 1)
  with pytest.raises(ValueError, match="num_negatives"):
    ranking.sample_negatives(targets, exclude, 7, 0)
  with pytest.raises(ValueError, match="seed"):
    ranking.sample_negatives(targets, exclude, 7, 1, seed=-1)
  with pytest.raises(ValueError, match="row_ids"):
    ranking.sample_negatives(targets, exclude, 7, 1, row_ids=[0])
  with pytest.raises(ValueError, match="targets must lie"):
    ranking.sample_negatives(np.array([1, 7]), exclude, 7, 1)
  scores = np.zeros((2, 7))
  with pytest.raises(ValueError, match="must not contain the row's target"):
    ranking.sampled_ranking_metrics(scores, targets, np.array([[1, 5], [3, 4]]))
  with pytest.raises(ValueError, match="distinct"):
    ranking.sampled_ranking_metrics(scores, targets, np.array([[5, 5], [3, 4]]))
  with pytest.raises(ValueError, match="padding"):
    ranking.sampled_ranking_metrics(scores, targets, np.array([[0, 5], [3, 4]]))
  with pytest.raises(ValueError, match="negatives must have shape"):
    ranking.sampled_ranking_metrics(scores, targets, np.array([5, 4]))
  scores[1, 4] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    ranking.sampled_ranking_metrics(scores, targets, np.array([[3, 5], [3, 4]]))


def test_gauc_errors():
  with pytest.raises(ValueError, match="no group has both"):
    ranking.gauc(np.array([0.1, 0.2, 0.3]), np.array([1, 1, 0]),
                 np.array([1, 1, 2]))
  with pytest.raises(ValueError, match="no group has both"):
    ranking.gauc(np.array([]), np.array([]), np.array([]))
  with pytest.raises(ValueError, match="shape"):
    ranking.gauc(np.zeros(3), np.zeros(2), np.zeros(3))
  with pytest.raises(ValueError, match="0 or 1"):
    ranking.gauc(np.zeros(2), np.array([0, 2]), np.zeros(2))
  with pytest.raises(ValueError, match="NaN"):
    ranking.gauc(np.array([np.nan, 0.1]), np.array([0, 1]), np.zeros(2))
  with pytest.raises(ValueError, match="weighting"):
    ranking.gauc(np.zeros(2), np.array([0, 1]), np.zeros(2), "clicks")
