"""Causal self-attention that computes only the rows a left-padded batch
needs: the SASRec encoder's ``model.encoder.attention = 'real_rows'``.

Why: at SASRec's reference configuration (length 200, 2 blocks) about
half of a CPU step is attention, and much of that attention is padding.  A
user's training window is left-padded (`data/movielens._windows`), so a
MovieLens-100K row holds on average fewer real tokens than padding, and
the dense [B, L, L] scores spend much of their work on rows and keys that
are padding.  The dense layout (`encoder.SASRecBlock` with flax's
attention) is the reference's computation; this module computes the same
numbers from a part of the scores (the measured epoch times are in
references/results/sasrec_reference.md):

* The batch is sorted by the length of each row's real part, ``L - lead``
  (``lead`` = how many leading positions are padding), and cut into groups
  of `group_size` rows.  Each group computes only its last ``Q`` positions
  as queries, ``Q`` the smallest of `num_buckets` static sizes that holds
  the group's longest real part (`jax.lax.switch` picks the branch, so
  every shape stays static).
* In the first block a padding position's input is exactly zero (the
  'sasrec' layout's `EncoderConfig.input_tokens`), so all its keys equal
  the key projection's bias and all its values the value bias.  A real
  query's ``p`` padding keys then enter the softmax as one term of
  multiplicity ``p``, and a padding query (which sees only padding keys)
  has the uniform distribution over them: both in closed form, nothing of
  [L, L] computed.
* In the last block the outputs at padding positions are never read (the
  losses, pooling and evaluation mask them), so only the real queries are
  computed, against all their causal keys (after the first block a padding
  position's key depends on its dropout, so it is no longer shared).  Those
  unread rows are left at a zero attention context: the encoder's output
  at padding positions differs from the dense layout's.
* A middle block (three or more) keeps the dense computation.

Attention dropout (torch's `MultiheadAttention`: each probability kept with
probability 1 - rate and scaled by 1 / (1 - rate)) stays exact in
distribution: the explicitly computed probabilities get per-element masks
as before, and the ``p`` identical padding terms of a row, whose masks only
matter through how many are kept, get that count drawn from
Binomial(p, 1 - rate).  The masks come from other draws than the dense
layout's, so a run with 'real_rows' is a different run from its 'dense'
twin (another random stream, the same distribution); with dropout off the
two agree to float rounding (tests/models/test_causal_attention.py also
checks the dropout path against a dense reference fed the same masks).

Cost and limits: each group's branch runs one bucket.  Under `jax.vmap` a
per-member branch index would make `lax.switch` evaluate every bucket, so
inside the population's vmap (`mtrec_jax/population_axis.py`) a group
takes the largest bucket any member's group needs (`population_max`, an
unbatched index); under another unnamed vmap every bucket is computed
(correct, slower than dense).  The parameters are those of flax's
`MultiHeadDotProductAttention` (the same names and initialisers), so a
checkpoint trained with one implementation loads in the other.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtrec_jax.population_axis import population_max

Dtype = Any
MODES = ("first", "last", "dense")
IMPLS = ("dense", "real_rows")


def bucket_sizes(length: int, num_buckets: int) -> tuple[int, ...]:
  """The static query counts a group can take: `num_buckets` sizes up to
  `length`, evenly spaced (the last is `length`)."""
  n = max(1, min(num_buckets, length))
  return tuple(sorted({math.ceil(length * (i + 1) / n) for i in range(n)}))


@dataclasses.dataclass(frozen=True)
class DrawnMasks:
  """Attention-dropout masks drawn from a key: what training uses.

  `explicit(group, rows, q_pos, k_pos)` is a keep mask for the probabilities
  a group computes ([g, H, Q, K] bool); `padding_counts(n)` is, per
  [B, H, L] query, how many of its `n` identical padding terms are kept.
  Tests give the same two methods a dense mask instead (`SlicedMasks`).
  """
  key: jax.Array
  keep: float
  num_heads: int

  def explicit(self, group: int, rows: jax.Array, q_pos: jax.Array,
               k_pos: jax.Array) -> jax.Array:
    shape = (rows.shape[0], self.num_heads, q_pos.shape[0], k_pos.shape[0])
    # fold 0 is the padding counts'; group -1 (a dense block) folds 1.
    return jax.random.bernoulli(jax.random.fold_in(self.key, group + 2),
                                self.keep, shape)

  def padding_counts(self, n: jax.Array) -> jax.Array:
    n = jnp.broadcast_to(n[:, None, :], (n.shape[0], self.num_heads,
                                         n.shape[1])).astype(jnp.float32)
    return jax.random.binomial(jax.random.fold_in(self.key, 0), n,
                               self.keep).astype(jnp.float32)


@dataclasses.dataclass(frozen=True)
class SlicedMasks:
  """The masks a dense [B, H, L, L] keep mask implies (for tests): the
  explicit blocks are its entries, the padding counts its kept entries
  among each query's first `n` keys (the padding keys are the leading
  ones)."""
  dense: jax.Array

  def explicit(self, group, rows, q_pos, k_pos):
    m = self.dense[rows]
    return m[:, :, q_pos][:, :, :, k_pos]

  def padding_counts(self, n):
    kept = jnp.cumsum(self.dense.astype(jnp.int32), axis=-1)  # [B,H,L,L]
    idx = jnp.maximum(n - 1, 0)[:, None, :, None]
    idx = jnp.broadcast_to(idx, kept.shape[:3] + (1,))
    count = jnp.take_along_axis(kept, idx, axis=-1)[..., 0]
    return jnp.where(n[:, None, :] > 0, count, 0).astype(jnp.float32)


def real_row_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                       lead: jax.Array, *, mode: str,
                       pad_key: jax.Array, pad_value: jax.Array,
                       masks: Optional[Any], keep: float,
                       group_size: int, num_buckets: int) -> jax.Array:
  """The attention context [B, L, H, D] of causal self-attention.

  q (already scaled by 1/sqrt(D)), k, v: [B, L, H, D]; lead: [B] leading
  padding positions per row; pad_key/pad_value: [H, D], the key and value
  of a zero input (mode 'first' reads padding through them, not through
  k/v); masks: None (no dropout) or an object like `DrawnMasks`; keep:
  1 - the attention dropout rate.
  """
  if mode not in MODES:
    raise ValueError(f"real_row_attention mode must be one of {MODES}, got "
                     f"{mode!r}")
  if mode == "dense":
    return _dense(q, k, v, masks, keep)
  batch, length = q.shape[:2]
  if batch == 0:  # nothing to group (lax.map needs a whole group)
    return jnp.zeros_like(q)
  heads = q.shape[2]
  pos = jnp.arange(length)
  lead = jnp.clip(lead.astype(jnp.int32), 0, length)
  # Leading padding keys each query sees: min(t + 1, lead).
  n_pad = jnp.minimum(pos[None, :] + 1, lead[:, None])  # [B, L]
  if masks is None:
    counts = jnp.broadcast_to(n_pad[:, None, :],
                              (batch, heads, length)).astype(jnp.float32)
  else:
    counts = masks.padding_counts(n_pad)
  scale = 1.0 / keep
  if mode == "first":
    # A padding query: uniform over its t + 1 identical keys.
    fill = (counts * scale / (pos + 1.0)).transpose(0, 2, 1)  # [B, L, H]
    fill = fill[..., None] * pad_value
  else:
    fill = jnp.zeros_like(q)
  # Sorted longest real part first, padded with all-padding rows to whole
  # groups; one scanned body, so each bucket compiles once.
  groups = -(-batch // group_size)
  extra = groups * group_size - batch
  order = jnp.concatenate([jnp.argsort(lead),
                           jnp.arange(batch, batch + extra)])
  widen = lambda a: jnp.pad(a, ((0, extra),) + ((0, 0),) * (a.ndim - 1))  # noqa: E731
  q_all, k_all, v_all, counts_all = map(widen, (q, k, v, counts))
  lead_all = jnp.pad(lead, (0, extra), constant_values=length)
  sizes = bucket_sizes(length, num_buckets)
  # Checkpointed: differentiating a switch otherwise keeps the union of
  # every branch's residuals (zero-filled), which cost more than it saved.
  branches = [jax.checkpoint(functools.partial(
      _group_rows, size=size, mode=mode, masks=masks, scale=scale))
              for size in sizes]

  def one_group(group):
    rows = jax.lax.dynamic_slice(order, (group * group_size,), (group_size,))
    need = length - jnp.min(lead_all[rows])
    branch = population_max(jnp.searchsorted(jnp.asarray(sizes), need))
    return jax.lax.switch(branch, branches, q_all[rows], k_all[rows],
                          v_all[rows], lead_all[rows], counts_all[rows],
                          rows, group, pad_key, pad_value)

  sorted_out = jax.lax.map(one_group, jnp.arange(groups))
  sorted_out = sorted_out.reshape((groups * group_size,) + q.shape[1:])
  # `order` is a permutation: unique indices (else JAX's derivative of the
  # scatter scatters ids to find which update wins, a pass over [B, L]).
  ctx = jnp.zeros_like(q_all).at[order].set(sorted_out,
                                            unique_indices=True)[:batch]
  real = pos[None, :] >= lead[:, None]
  return jnp.where(real[:, :, None, None], ctx, fill)


def _group_rows(q, k, v, lead, counts, rows, group, pad_key, pad_value, *,
                size, mode, masks, scale):
  """One group's context [g, L, H, D] from its last `size` queries (zero
  before them; the caller keeps only real positions)."""
  length = q.shape[1]
  q_pos = jnp.arange(length - size, length)
  qw = q[:, length - size:]
  if mode == "first":
    k_pos = q_pos
    kw, vw = k[:, length - size:], v[:, length - size:]
    allowed = ((q_pos[:, None] >= k_pos[None, :])[None]
               & (k_pos[None, None, :] >= lead[:, None, None]))  # [g,Q,K]
  else:
    k_pos = jnp.arange(length)
    kw, vw = k, v
    allowed = jnp.broadcast_to((q_pos[:, None] >= k_pos[None, :])[None],
                               (q.shape[0], size, length))
  allowed = allowed[:, None]  # [g, 1, Q, K]
  logits = jnp.einsum("gqhd,gkhd->ghqk", qw, kw)
  logits = jnp.where(allowed, logits, -jnp.inf)
  top = jnp.max(logits, axis=-1)  # [g, H, Q]
  if mode == "first":
    n_pad = jnp.minimum(q_pos[None, :] + 1, lead[:, None])[:, None, :]
    pad_logit = jnp.einsum("gqhd,hd->ghq", qw, pad_key)
    top = jnp.maximum(top, jnp.where(n_pad > 0, pad_logit, -jnp.inf))
  top = jax.lax.stop_gradient(jnp.where(jnp.isfinite(top), top, 0.0))
  weights = jnp.where(allowed, jnp.exp(logits - top[..., None]), 0.0)
  total = jnp.sum(weights, axis=-1)
  if masks is not None:
    keep_mask = masks.explicit(group, rows, q_pos, k_pos)
    weights = jnp.where(keep_mask, weights * scale, 0.0)
  ctx = jnp.einsum("ghqk,gkhd->gqhd", weights, vw)
  if mode == "first":
    pad_weight = jnp.where(n_pad > 0, jnp.exp(pad_logit - top), 0.0)
    total = total + n_pad * pad_weight
    kept = counts[:, :, length - size:]
    if masks is not None:
      kept = kept * scale
    ctx = ctx + jnp.einsum("ghq,hd->gqhd", kept * pad_weight, pad_value)
  ctx = ctx / jnp.maximum(total, 1e-30).transpose(0, 2, 1)[..., None]
  return jnp.pad(ctx, ((0, 0), (length - size, 0), (0, 0), (0, 0)))


def _dense(q, k, v, masks, keep):
  """Plain causal attention over every row (a middle block)."""
  length = q.shape[1]
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
  causal = jnp.tril(jnp.ones((length, length), bool))
  weights = jax.nn.softmax(jnp.where(causal, logits, -jnp.inf), axis=-1)
  if masks is not None:
    rows = jnp.arange(q.shape[0])
    keep_mask = masks.explicit(-1, rows, jnp.arange(length),
                               jnp.arange(length))
    weights = jnp.where(keep_mask, weights / keep, 0.0)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


class RealRowAttention(nn.Module):
  """Drop-in for the 'sasrec' block's `nn.MultiHeadDotProductAttention`
  (same parameter names and initialisers) on a left-padded causal batch:
  ``__call__(x, lead, mode=...)`` with `lead` [B] the leading padding
  positions of each row.  Module docstring: what is computed."""
  num_heads: int
  dropout_rate: float = 0.0
  kernel_init: Callable = nn.initializers.lecun_normal()
  out_kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros
  out_bias_init: Callable = nn.initializers.zeros
  group_size: int = 16
  num_buckets: int = 8
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, lead: jax.Array, *, mode: str,
               deterministic: bool) -> jax.Array:
    width = x.shape[-1]
    head_dim = width // self.num_heads
    dense = lambda name: nn.DenseGeneral(  # noqa: E731
        features=(self.num_heads, head_dim), axis=-1, dtype=self.dtype,
        kernel_init=self.kernel_init, bias_init=self.bias_init, name=name)
    project_q, project_k, project_v = dense("query"), dense("key"), \
        dense("value")
    q, k, v = project_q(x), project_k(x), project_v(x)
    # flax scales the query by 1/sqrt(depth) before the dot product.
    q = q / jnp.sqrt(head_dim).astype(q.dtype)
    zero = jnp.zeros((1, width), x.dtype)
    pad_key, pad_value = project_k(zero)[0], project_v(zero)[0]
    masks = None
    keep = 1.0 - self.dropout_rate
    if self.dropout_rate > 0.0 and not deterministic:
      masks = DrawnMasks(self.make_rng("dropout"), keep, self.num_heads)
    ctx = real_row_attention(q, k, v, lead, mode=mode, pad_key=pad_key,
                             pad_value=pad_value, masks=masks, keep=keep,
                             group_size=self.group_size,
                             num_buckets=self.num_buckets)
    return nn.DenseGeneral(features=width, axis=(-2, -1), dtype=self.dtype,
                           kernel_init=self.out_kernel_init,
                           bias_init=self.out_bias_init, name="out")(ctx)
