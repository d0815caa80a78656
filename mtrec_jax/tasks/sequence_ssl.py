"""Self-supervised sequence tasks: Cloze masks, CL4SRec augmentations, NT-Xent.

Building blocks for auxiliary self-supervised objectives on item sequences; the
model and training code decide how to embed, encode and weight them.

* `cloze_mask`: the Cloze (masked item) task of BERT4Rec (Sun et al.,
  "BERT4Rec: Sequential Recommendation with Bidirectional Encoder
  Representations from Transformer", CIKM 2019).
* `crop`, `mask_items`, `reorder`, `augment`: the three sequence
  augmentations of CL4SRec (Xie et al., "Contrastive Learning for Sequential
  Recommendation", ICDE 2022; arXiv:2010.14395).
* `info_nce`: the NT-Xent contrastive loss CL4SRec optimises, in the form of
  SimCLR (Chen et al., "A Simple Framework for Contrastive Learning of Visual
  Representations", ICML 2020).

Conventions (those of `mtrec_jax.specs`):

* Item sequences are int32 [B, L], LEFT-padded with id 0, so the most recent
  item sits at position L-1.  Id 0 is padding: it is never masked, and crop and
  reorder never move a real item into a padding slot or the reverse.  A row's
  n real items are its non-zero entries, in position order (crop and reorder
  also accept rows whose zeros are not all on the left; their outputs are
  left-padded).
* Every function is pure and jittable with static shapes, takes an explicit
  `jax.random` key and is deterministic given it.  Randomness comes from one
  batched uniform draw per call (row b reads row b of it), and the work is
  done by jitted programs, so eager calls are fast too.
* Augmentation ratios (`eta`, `gamma`, `beta`) are Python floats: the
  per-row counts floor(ratio * n) are tabulated for n = 0..L on the host in
  float64, so they equal Python's `math.floor(ratio * n)` exactly (float32
  disagrees, e.g. 0.7 * 90 is 62.99999999999999 in float64 but 63 in
  float32).  The table is an argument of the jitted program, so a new ratio
  does not recompile.
"""
from __future__ import annotations

import functools
import math
import numbers
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# BERT4Rec's mask proportion rho for ML-1M: the paper tunes rho per dataset
# (its study of rho favours small values for long sequences), and the
# authors' released run scripts use masked_lm_prob = 0.2 for ML-1M and
# ML-20M, 0.4 for Steam and 0.6 for Beauty.
CLOZE_MASK_PROB = 0.2

# CL4SRec's ratios: crop keeps eta * n items, mask hides gamma * n, reorder
# shuffles beta * n.  The paper studies the effect of each ratio per dataset,
# but we could not confirm from its text one best (eta, gamma, beta) for
# ML-1M, so these are the defaults of the public PyTorch implementations of
# the three augmentations (item_crop / item_mask / item_reorder) that we
# checked.  Treat them as a starting point to tune, not as the paper's ML-1M
# optimum.
CROP_ETA = 0.6
MASK_GAMMA = 0.3
REORDER_BETA = 0.6

# `augment` picks one of these per row, uniformly, as CL4SRec does (two
# independent draws give a row's two views).
AUGMENTATIONS = ("crop", "mask", "reorder")

SIMILARITIES = ("dot", "cosine")

# CL4SRec's similarity is the plain dot product sim(u, v) = u^T v, and its
# contrastive loss has no temperature, i.e. temperature 1.  SimCLR's NT-Xent
# divides the cosine similarity by a tuned temperature.
INFO_NCE_TEMPERATURE = 1.0
INFO_NCE_SIMILARITY = "dot"


# ----------------------------------------------------------------------------
# Input checks and shared helpers.


def _check_ids(ids, where: str) -> jax.Array:
  ids = jnp.asarray(ids)
  if ids.ndim != 2:
    raise ValueError(f"{where}: ids must be a [B, L] array of item ids, got "
                     f"shape {ids.shape}")
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    raise ValueError(f"{where}: ids must be integers (0 = padding), got dtype "
                     f"{ids.dtype}")
  return ids


def _check_ratio(value, name: str, where: str) -> float:
  """A static ratio in [0, 1] (tracers are refused: counts are tabulated)."""
  if not isinstance(value, numbers.Real):  # tracers and arrays are not
    raise TypeError(f"{where}: {name} must be a Python float in [0, 1] (it "
                    f"sets static per-row counts), got {value!r}")
  value = float(value)
  if not 0.0 <= value <= 1.0:
    raise ValueError(f"{where}: {name} must lie in [0, 1], got {value}")
  return value


def _count_table(ratio: float, length: int, at_least_one: bool) -> jax.Array:
  """int32 [L + 1]: entry n is floor(ratio * n) (>= 1 when asked and n >= 1),
  computed in float64 as Python does."""
  counts = [math.floor(ratio * n) for n in range(length + 1)]
  if at_least_one:
    counts = [max(1, c) if n else 0 for n, c in enumerate(counts)]
  return jnp.asarray(np.asarray(counts, np.int32))


def _real_positions(ids: jax.Array) -> jax.Array:
  """int32 [B, L]: per row, the positions of its real items in order, then
  those of its padding (for a left-padded row with n items: L-n, ..., L-1,
  0, ..., L-n-1).  Entry k < n is where the row's k-th real item sits."""
  length = ids.shape[1]
  index = jnp.arange(length)
  return jnp.argsort(jnp.where(ids != 0, index, index + length),
                     axis=1).astype(jnp.int32)


def _uniform_int(u: jax.Array, size: jax.Array) -> jax.Array:
  """Uniform ints in [0, size) from uniforms u in [0, 1) (size >= 1)."""
  return jnp.minimum(jnp.floor(u * size).astype(jnp.int32), size - 1)


# Each augmentation reads its randomness from one batched uniform draw:
# threefry is by far the costliest part of these programs to compile, so one
# draw per call keeps compile time down (`augment` makes one draw for all
# three).  Columns: crop [start]; mask [L]; reorder [start, L].


@jax.jit
def _crop(ids, counts, u_start):
  length = ids.shape[1]
  n = jnp.sum(ids != 0, axis=1)
  c = counts[n]
  start = _uniform_int(u_start, n - c + 1)
  # Output slot t holds real item start + (t - (L - c)) when t >= L - c.
  offset = jnp.arange(length)[None, :] - (length - c)[:, None]
  real_index = jnp.clip(start[:, None] + offset, 0, length - 1)
  source = jnp.take_along_axis(_real_positions(ids), real_index, axis=1)
  return jnp.where(offset >= 0, jnp.take_along_axis(ids, source, axis=1),
                   0).astype(ids.dtype)


@jax.jit
def _mask(ids, counts, u):
  real = ids != 0
  m = counts[jnp.sum(real, axis=1)]
  rank = jnp.argsort(jnp.argsort(jnp.where(real, u, jnp.inf), axis=1), axis=1)
  return real & (rank < m[:, None])


@jax.jit
def _reorder(ids, counts, u_start, u_perm):
  length = ids.shape[1]
  n = jnp.sum(ids != 0, axis=1)
  r = counts[n]
  start = _uniform_int(u_start, n - r + 1)[:, None]
  # Work in real-item order k = 0..L-1 (k >= n: padding, never in the run).
  # Items of the run share one group and are ordered by fresh uniforms; every
  # other item is its own group, so it keeps its place.
  k = jnp.arange(length)[None, :]
  in_run = (k >= start) & (k < start + r[:, None])
  group = jnp.where(in_run, start, k)
  perm = jnp.lexsort((u_perm, group), axis=1)
  positions = _real_positions(ids)
  moved = jnp.take_along_axis(ids, jnp.take_along_axis(positions, perm, axis=1),
                              axis=1)
  rows = jnp.arange(ids.shape[0])[:, None]
  return ids.at[rows, positions].set(moved)


# ----------------------------------------------------------------------------
# BERT4Rec Cloze task.


def cloze_mask(key: jax.Array, ids, mask_prob: float = CLOZE_MASK_PROB
               ) -> jax.Array:
  """bool [B, L]: the positions BERT4Rec's Cloze task hides and predicts.

  Each real position is masked independently with probability `mask_prob`
  (default 0.2, the paper's rho for ML-1M; see `CLOZE_MASK_PROB`).  A row with
  at least one real item always gets a mask: when the draw picks none, its
  most recent item is masked, the position the model predicts at test time.
  Padding is never masked.  So the expected count for a row of n items is
  n * p + (1 - p)^n, a little above n * p for short rows.

  The caller replaces masked items by the [mask] token and scores the hidden
  ids there.  Unlike this Bernoulli draw, the authors' data generator masks
  exactly max(1, round(rho * n)) items per sequence (at most 40 for ML-1M),
  about the same rate; it also adds one copy of each sequence with only its
  last item masked, which `mask_prob=0` gives here.

  `mask_prob` may be traced (e.g. a schedule).
  """
  ids = _check_ids(ids, "cloze_mask")
  if isinstance(mask_prob, numbers.Real) and not 0.0 <= mask_prob <= 1.0:
    raise ValueError(f"cloze_mask: mask_prob must lie in [0, 1], got "
                     f"{mask_prob}")
  return _cloze_mask(key, ids, mask_prob)


@jax.jit
def _cloze_mask(key, ids, mask_prob):
  length = ids.shape[1]
  real = ids != 0
  mask = real & jax.random.bernoulli(key, mask_prob, ids.shape)
  # The last real position (L-1 under left padding, found for robustness).
  last = length - 1 - jnp.argmax(real[:, ::-1], axis=1)
  fallback = real.any(axis=1) & ~mask.any(axis=1)
  at_last = jnp.arange(length)[None, :] == last[:, None]
  return mask | (fallback[:, None] & at_last)


# ----------------------------------------------------------------------------
# CL4SRec augmentations.


def crop(key: jax.Array, ids, eta: float = CROP_ETA) -> jax.Array:
  """[B, L] ids: per row, a contiguous run of its items, re-left-padded.

  CL4SRec's item crop: a row with n items keeps c = max(1, floor(eta * n)) of
  them (the paper's L_c = floor(eta * n); at least one so that a short
  history never becomes empty), starting at an offset drawn uniformly from
  [0, n - c].  Empty rows stay empty.  Default eta = 0.6 (`CROP_ETA`).
  """
  ids = _check_ids(ids, "crop")
  eta = _check_ratio(eta, "eta", "crop")
  counts = _count_table(eta, ids.shape[1], at_least_one=True)
  return _crop(ids, counts, jax.random.uniform(key, ids.shape[:1]))


def mask_items(key: jax.Array, ids, gamma: float = MASK_GAMMA) -> jax.Array:
  """bool [B, L]: CL4SRec's item mask, floor(gamma * n) real positions per row.

  The positions are a uniform draw without replacement among the row's n real
  items (rows with floor(gamma * n) = 0 get none).  The caller replaces the
  embedding at masked positions by a learned [mask] vector, so a mask is
  returned rather than rewritten ids.  Default gamma = 0.3 (`MASK_GAMMA`).
  """
  ids = _check_ids(ids, "mask_items")
  gamma = _check_ratio(gamma, "gamma", "mask_items")
  counts = _count_table(gamma, ids.shape[1], at_least_one=False)
  return _mask(ids, counts, jax.random.uniform(key, ids.shape))


def reorder(key: jax.Array, ids, beta: float = REORDER_BETA) -> jax.Array:
  """[B, L] ids: per row, a contiguous run of its items shuffled in place.

  CL4SRec's item reorder: a row with n items permutes r = floor(beta * n)
  consecutive items (offset uniform in [0, n - r], permutation uniform), and
  leaves everything else, padding included, where it was.  Default
  beta = 0.6 (`REORDER_BETA`).
  """
  ids = _check_ids(ids, "reorder")
  beta = _check_ratio(beta, "beta", "reorder")
  counts = _count_table(beta, ids.shape[1], at_least_one=False)
  u = jax.random.uniform(key, (ids.shape[0], 1 + ids.shape[1]))
  return _reorder(ids, counts, u[:, 0], u[:, 1:])


def augment(key: jax.Array, ids, eta: float = CROP_ETA,
            gamma: float = MASK_GAMMA, beta: float = REORDER_BETA, *,
            ops: Sequence[str] = AUGMENTATIONS, with_choice: bool = False):
  """One CL4SRec view per row: crop, mask or reorder, picked uniformly.

  Returns (ids [B, L], mask bool [B, L]); rows that drew crop or reorder have
  an all-False mask, rows that drew mask keep their ids.  Call it twice with
  independent keys for a row's two views, as CL4SRec samples a_i and a_j
  independently from the augmentation set.  `ops` restricts the set (e.g.
  ('crop',) for a single-augmentation ablation); with `with_choice=True` a
  third output gives each row's draw as an index into `AUGMENTATIONS`
  (0 crop, 1 mask, 2 reorder).  All three augmentations are computed for
  every row and selected, which costs little next to the encoder.
  """
  ids = _check_ids(ids, "augment")
  ops = tuple(ops)
  unknown = [op for op in ops if op not in AUGMENTATIONS]
  if not ops or unknown or len(set(ops)) != len(ops):
    raise ValueError(f"augment: ops must be distinct names from "
                     f"{AUGMENTATIONS}, got {ops}")
  length = ids.shape[1]
  counts = (
      _count_table(_check_ratio(eta, "eta", "augment"), length, True),
      _count_table(_check_ratio(gamma, "gamma", "augment"), length, False),
      _count_table(_check_ratio(beta, "beta", "augment"), length, False))
  u = jax.random.uniform(key, (ids.shape[0], 3 + 2 * length))
  out_ids, out_mask, choice = _augment(ids, counts, u, ops)
  if with_choice:
    return out_ids, out_mask, choice
  return out_ids, out_mask


@functools.partial(jax.jit, static_argnums=3)
def _augment(ids, counts, u, ops):
  length = ids.shape[1]
  allowed = jnp.asarray([AUGMENTATIONS.index(op) for op in ops], jnp.int32)
  choice = allowed[_uniform_int(u[:, 0], len(ops))]
  out_ids, out_mask = ids, jnp.zeros(ids.shape, bool)
  if "crop" in ops:
    out_ids = jnp.where((choice == 0)[:, None],
                        _crop(ids, counts[0], u[:, 1]), out_ids)
  if "mask" in ops:
    out_mask = ((choice == 1)[:, None]
                & _mask(ids, counts[1], u[:, 3:3 + length]))
  if "reorder" in ops:
    out_ids = jnp.where((choice == 2)[:, None],
                        _reorder(ids, counts[2], u[:, 2], u[:, 3 + length:]),
                        out_ids)
  return out_ids, out_mask, choice


# ----------------------------------------------------------------------------
# Contrastive loss.


def info_nce(z1, z2, temperature: float = INFO_NCE_TEMPERATURE, *,
             similarity: str = INFO_NCE_SIMILARITY, valid=None,
             eps: float = 1e-8) -> jax.Array:
  """NT-Xent loss of two views [B, D] of the same rows (scalar, float32).

  The 2B views are [z1; z2]; view i's positive is its pair (row i of the
  other view), its negatives the other 2(B - 1) views, and its loss is
  -log softmax over those 2B - 1 candidates (self-similarity excluded) of
  sim / temperature at the positive.  The result is the mean over views.

  similarity: 'dot' (default; CL4SRec's sim(u, v) = u^T v, whose loss has no
    temperature, so temperature defaults to 1) or 'cosine' (SimCLR's, with
    norms floored at `eps` so an all-zero representation, e.g. an empty
    history, gives zeros and finite gradients).
  valid: optional bool [B]; rows marked False are dropped from the mean and
    from every other view's negatives (e.g. users with an empty history) and
    get zero gradient.  Their values must still be finite (a NaN would reach
    the gradients through the similarity matrix).  With no valid row the
    loss is 0.
  """
  if similarity not in SIMILARITIES:
    raise ValueError(f"info_nce: similarity must be one of {SIMILARITIES}, "
                     f"got {similarity!r}")
  if isinstance(temperature, numbers.Real) and not temperature > 0:
    raise ValueError(f"info_nce: temperature must be > 0, got {temperature}")
  z1 = jnp.asarray(z1, jnp.float32)
  z2 = jnp.asarray(z2, jnp.float32)
  if z1.ndim != 2 or z1.shape != z2.shape:
    raise ValueError(f"info_nce: z1 and z2 must both be [B, D] arrays of the "
                     f"same shape, got {z1.shape} and {z2.shape}")
  batch = z1.shape[0]
  if valid is None:
    valid = jnp.ones((batch,), bool)
  valid = jnp.asarray(valid).astype(bool)
  if valid.shape != (batch,):
    raise ValueError(f"info_nce: valid must have shape [{batch}], got "
                     f"{valid.shape}")
  return _info_nce(z1, z2, valid, temperature, similarity, eps)


@functools.partial(jax.jit, static_argnames=("similarity",))
def _info_nce(z1, z2, valid, temperature, similarity, eps):
  batch = z1.shape[0]
  z = jnp.concatenate([z1, z2], axis=0)
  if similarity == "cosine":
    squared = jnp.sum(z * z, axis=-1, keepdims=True)
    z = z * jax.lax.rsqrt(jnp.maximum(squared, eps * eps))
  logits = (z @ z.T) / temperature
  views = 2 * batch
  index = jnp.arange(views)
  partner = (index + batch) % views
  view_valid = jnp.concatenate([valid, valid])
  not_self = index[:, None] != index[None, :]
  # Invalid views keep every candidate so that their (discarded) row stays
  # finite; a valid view always has its positive among its candidates.
  candidate = not_self & (view_valid[None, :] | ~view_valid[:, None])
  log_norm = jax.nn.logsumexp(jnp.where(candidate, logits, -jnp.inf), axis=1)
  per_view = log_norm - logits[index, partner]
  weight = view_valid.astype(jnp.float32)
  return jnp.sum(per_view * weight) / jnp.maximum(jnp.sum(weight), 1.0)
