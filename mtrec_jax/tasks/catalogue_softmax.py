"""Full-softmax cross-entropy over an item catalogue, without [N, V] logits.

Why: all-positions next-item training (SASRec's setup, `next_all` with
``loss='softmax'``) scores every position of every sequence against every
item.  The plain way, ``optax.softmax_cross_entropy_with_integer_labels(
x @ table.T + bias, targets)``, materialises [B, L, V] logits, a copy with
the padding column set, their softmax and its gradient, each written to and
read back from memory; on a CPU that traffic, not the matmul, is most of the
cost, and padded positions (about a fifth of ML-100K's [128, 50] batches)
are scored only to be multiplied by 0.

`catalogue_softmax_loss` computes the same sum of weighted cross-entropies
in one pass over chunks of rows, each chunk's [R, V] logits living only
inside that chunk's step:

* rows with weight 0 (padding) are moved behind the weighted ones (a stable
  partition by prefix sums) and chunks holding none are skipped
  (`jax.lax.cond`; inside a population's vmap a chunk is computed when
  any member has a weighted row in it, `mtrec_jax/population_axis.py`, so
  the cond stays a cond; under another vmap both branches run; the result
  is the same);
* the bias is folded into the logits' matmul (x gets a column of ones, the
  table a column holding the bias, -1e9 at the padding and excluded
  items), so no pass over [R, V] adds it or masks columns;
* the gradient is computed in the same pass as the value (the fused linear
  cross-entropy of Liger-Kernel, Hsu et al. 2024, and of Wijmans et al.,
  "Cut Your Losses in Large-Vocabulary Language Models", 2024): per chunk,
  with G = softmax(z) - onehot(target) scaled by the row weights, dx =
  G table, dtable += G^T x and dbias += sum G come from exp(z - max) and
  each row's scale w / sum without writing G (the onehot part is a gather
  and a scatter of the target rows; dbias is the ones column's share of
  G^T [x, 1]).  A `jax.custom_jvp` rule returns the loss's tangent as
  <dx, x'> + <dtable, table'> + <dbias, bias'>, which JAX transposes for
  reverse mode, so `jax.grad` costs this one pass and no [N, V] array is
  kept for the backward pass; forward mode (`jax.jvp`, Auto-Lambda's
  meta-gradient) and `vmap` work too, and so do higher derivatives
  (through the chunked computation of the gradient, by JAX's own rules:
  correct, not fast).

The value equals the plain formula's up to float rounding (the same
max-shifted log-sum-exp per row as optax's, summed in another order and
with matmuls blocked differently, the bias added inside the matmul): not
bit-identical, about 1e-7 relative in float32.  (Before the bias was
folded in, 2026-12-06, the kernel added it and masked the padding column
in separate passes over the logits: runs of either kernel agree up to
that rounding, not bit for bit.)  The padding column (``exclude_padding``)
gets the logit -1e9, as the plain formula's ``.at[..., 0].set(-1e9)``:
probability exactly 0 and no gradient to table row 0 or bias 0 through
the logits.  So do the columns of ``excluded_items`` (a cold-start
split's held-out items, which must not be trained as everyone's
negative: `tasks.auxiliary.NextItemSequenceTask`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtrec_jax.population_axis import population_max

# The logit of the padding column (as `tasks.auxiliary`'s plain formula).
PADDING_LOGIT = -1e9
# Default [R, V] logit elements per chunk: 2^19 float32 = 2 MiB, small enough
# to stay in a CPU core's L2/L3 cache with its softmax.
CHUNK_ELEMENTS = 1 << 19


def chunk_rows_for(num_items: int, elements: int = CHUNK_ELEMENTS) -> int:
  """Rows per chunk so that one chunk's logits hold about `elements`."""
  return max(1, elements // max(int(num_items), 1))


def _check(x, table, targets, weights, bias):
  if x.ndim != 2 or table.ndim != 2 or x.shape[1] != table.shape[1]:
    raise ValueError(f"catalogue_softmax_loss: x must be [N, E] and table "
                     f"[V, E] with the same E, got {x.shape} and "
                     f"{table.shape}")
  n, v = x.shape[0], table.shape[0]
  if targets.shape != (n,) or weights.shape != (n,):
    raise ValueError(f"catalogue_softmax_loss: targets and weights must be "
                     f"[{n}] (one per row of x), got {targets.shape} and "
                     f"{weights.shape}")
  if not jnp.issubdtype(targets.dtype, jnp.integer):
    raise ValueError(f"catalogue_softmax_loss: targets must be integer item "
                     f"ids, got dtype {targets.dtype}")
  if bias is not None and bias.shape != (v,):
    raise ValueError(f"catalogue_softmax_loss: bias must be [{v}] (one per "
                     f"item), got {bias.shape}")


def catalogue_softmax_loss(x: jax.Array, table: jax.Array,
                           targets: jax.Array, weights: jax.Array,
                           bias: Optional[jax.Array] = None, *,
                           exclude_padding: bool = True,
                           excluded_items: Sequence[int] = (),
                           chunk_rows: Optional[int] = None) -> jax.Array:
  """sum_n weights[n] * CE(x[n] @ table.T + bias, targets[n]), a scalar.

  Args:
    x: [N, E] row vectors (e.g. the [B, L] positions flattened); computed in
      float32 at least.
    table: [V, E] item vectors; column v of the logits is item v.
    targets: [N] integer item ids in [0, V) (any id where the weight is 0).
    weights: [N] row weights (0 for padding; e.g. a 0/1 mask), constants:
      no derivative flows to them (the rows of weight 0 are never scored,
      so their cross-entropy, the derivative, is not known).
    bias: optional [V] per-item bias added to every row's logits.
    exclude_padding: give item 0 (the padding id) the logit -1e9, so it is
      never an answer.
    excluded_items: further item ids (static, e.g. held-out items) given
      the logit -1e9 like the padding column: never an answer, no gradient
      to their table rows or biases through the logits.  No row's target
      may be one of them (its cross-entropy would be about 1e9).
    chunk_rows: rows per chunk (default: about `CHUNK_ELEMENTS` logits).

  Returns:
    The float32 weighted sum; divide by the weight sum for a mean.  Value
    and derivatives (with respect to x, table and bias) equal those
    of the plain [N, V] formula up to float rounding (module docstring).
  """
  x, table = jnp.asarray(x), jnp.asarray(table)
  targets, weights = jnp.asarray(targets), jnp.asarray(weights)
  bias = None if bias is None else jnp.asarray(bias)
  _check(x, table, targets, weights, bias)
  dtype = jnp.promote_types(jnp.promote_types(x.dtype, table.dtype),
                            jnp.float32)
  num_items = table.shape[0]
  if bias is None:
    bias = jnp.zeros((num_items,), dtype)
  rows = chunk_rows or chunk_rows_for(num_items)
  if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
    raise ValueError(f"catalogue_softmax_loss: chunk_rows must be an int "
                     f">= 1, got {chunk_rows!r}")
  rows = min(rows, max(x.shape[0], 1))
  excluded = _excluded_ids(excluded_items, num_items)
  fn = _loss_fn(rows, bool(exclude_padding), excluded)
  return fn(x.astype(dtype), table.astype(dtype), bias.astype(dtype),
            jax.lax.stop_gradient(weights.astype(dtype)),
            targets.astype(jnp.int32))


def _excluded_ids(items, num_items: int) -> tuple[int, ...]:
  """`items` as a sorted tuple of distinct ids in [0, num_items)."""
  ids = np.unique(np.asarray(items, np.int64).reshape(-1))
  if ids.size and (ids[0] < 0 or ids[-1] >= num_items):
    raise ValueError(f"catalogue_softmax_loss: excluded_items must be item "
                     f"ids in [0, {num_items}), got {ids[0]}..{ids[-1]}")
  return tuple(int(i) for i in ids)


def _blocked_mask(num_items: int, exclude_padding: bool,
                  excluded: tuple[int, ...]):
  """[V] bool numpy, True where a column gets `PADDING_LOGIT` (None: no
  column)."""
  if not (exclude_padding or excluded):
    return None
  mask = np.zeros(num_items, bool)
  mask[list(excluded)] = True
  mask[0] |= exclude_padding
  return mask


def _chunked(x, table, bias, weights, targets, rows: int,
             exclude_padding: bool, excluded: tuple[int, ...],
             with_grads: bool):
  """(sum of weighted CE, per-row CE [N], dx [N, E], dtable, dbias) of the
  loss; the gradient parts are None unless `with_grads`.  A row of weight
  0 has a CE of 0 or, when its chunk is computed, its actual CE."""
  n, width = x.shape
  num_items = table.shape[0]
  num_chunks = -(-n // rows)
  padded = num_chunks * rows
  # Weighted rows first, padding last, each in its own order: row i goes to
  # `dest[i]` (a stable partition by prefix sums; no sort).
  keep = weights != 0
  live = jnp.sum(keep)
  # Chunks past every population member's weighted rows are skipped (one
  # decision for all members: a chunk of weight-0 rows adds exactly 0).
  live_any = population_max(live)
  dest = jnp.where(keep, jnp.cumsum(keep) - 1, live + jnp.cumsum(~keep) - 1)

  def sort_pad(a):  # rows n..padded-1 are zeros (weight 0, skipped)
    return jnp.zeros((padded,) + a.shape[1:], a.dtype).at[dest].set(
        a, unique_indices=True)

  # The bias folded into the matmul: x gets a column of ones, the table a
  # column holding the bias, PADDING_LOGIT at the blocked items (their
  # exp(z - max) is exactly 0, as with the logit set to PADDING_LOGIT).
  blocked = _blocked_mask(num_items, exclude_padding, excluded)
  if blocked is not None:
    bias = jnp.where(blocked, jnp.asarray(PADDING_LOGIT, bias.dtype), bias)
  folded = jnp.concatenate([table, bias[:, None]], axis=1)  # [V, E + 1]
  ones = jnp.ones((n, 1), x.dtype)
  xs = sort_pad(jnp.concatenate([x, ones], axis=1)).reshape(
      num_chunks, rows, width + 1)
  ws = sort_pad(weights).reshape(num_chunks, rows)
  ts = sort_pad(targets).reshape(num_chunks, rows)
  # A blocked target's logit is a constant: no gradient through it.
  target_live = (jnp.ones((num_items,), x.dtype) if blocked is None
                 else jnp.asarray(~blocked, x.dtype))

  def compute(xc, wc, tc):
    z = xc @ folded.T  # logits + bias, in one matmul
    # optax.softmax_cross_entropy_with_integer_labels, row by row.
    top = jnp.max(z, axis=-1)
    exp = jnp.exp(z - top[:, None])
    total = jnp.sum(exp, axis=-1)
    label = jnp.take_along_axis(z, tc[:, None], axis=-1)[:, 0]
    ce = jnp.log(total) + (top - label)
    if not with_grads:
      return ce, None, None
    # G = w (softmax - onehot), never materialised: G @ T and G^T @ x from
    # exp, each row's scale w / total and the target rows.
    scale = wc / total
    hit = wc * target_live[tc]
    dx = (exp @ table) * scale[:, None] - hit[:, None] * table[tc]
    dfold = (exp.T @ (xc * scale[:, None])).at[tc].add(-hit[:, None] * xc)
    return ce, dx, dfold

  def skip(xc, wc, tc):
    del wc, tc
    zeros = jnp.zeros((rows,), x.dtype)
    if not with_grads:
      return zeros, None, None
    return zeros, jnp.zeros((rows, width), x.dtype), jnp.zeros_like(folded)

  def body(carry, chunk):
    i, xc, wc, tc = chunk
    ce, dx, dfold = jax.lax.cond(i * rows < live_any, compute, skip, xc,
                                 wc, tc)
    if with_grads:
      carry = carry + dfold
    return carry, (ce, dx)

  init = jnp.zeros_like(folded) if with_grads else ()
  carry, (ce, dx) = jax.lax.scan(
      body, init, (jnp.arange(num_chunks), xs, ws, ts))
  ce = ce.reshape(padded)[dest]  # back to the callers' row order
  total = jnp.sum(ce * weights)
  if not with_grads:
    return total, ce, None, None, None
  dx = dx.reshape(padded, width)[dest]
  return total, ce, dx, carry[:, :width], carry[:, width]


_FNS: dict = {}


def _loss_fn(rows: int, exclude_padding: bool, excluded: tuple[int, ...]):
  """The custom_jvp function for one (chunk size, excluded columns)."""
  key = (rows, exclude_padding, excluded)
  if key in _FNS:
    return _FNS[key]

  @jax.custom_jvp
  def loss(x, table, bias, weights, targets):
    return _chunked(x, table, bias, weights, targets, rows, exclude_padding,
                    excluded, with_grads=False)[0]

  @loss.defjvp
  def loss_jvp(primals, tangents):
    x, table, bias, weights, targets = primals
    dx, dtab, db = tangents[:3]  # weights and targets are constants
    total, _, gx, gtab, gb = _chunked(x, table, bias, weights, targets, rows,
                                       exclude_padding, excluded,
                                       with_grads=True)
    tangent = jnp.vdot(gx, dx) + jnp.vdot(gtab, dtab) + jnp.vdot(gb, db)
    return total, tangent

  _FNS[key] = loss
  return loss
