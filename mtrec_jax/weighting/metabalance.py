"""MetaBalance: auxiliary gradients rescaled toward the main task's.

He, Feng, Cheng, Ji, Guo & Caverlee, "MetaBalance: Improving Multi-Task
Recommendations via Adapting Gradient Magnitudes of Auxiliary Tasks", WWW
2022 (official code: facebookresearch/MetaBalance).

The recommendation case: one *main* (target) task -- e.g. purchase -- is what
is evaluated; the other tasks -- click, add-to-cart, favourite, or
self-supervised losses -- are *auxiliary* and only there to help it through
the shared layers.  Two failure modes motivate the method: an auxiliary
gradient much larger than the main one dominates the shared parameters; a
much smaller one does not help.  MetaBalance keeps the main gradient as it
is and pulls every auxiliary gradient's magnitude toward the main one's,
separately for each part (parameter tensor) of the shared network, with a
moving average of the magnitudes so the scale does not jump with the batch.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from mtrec_jax.registry import STRATEGIES
from mtrec_jax.weighting.base import Strategy, Weighting, combine_tree
from mtrec_jax.weighting.loss_weighting import resolve_mode

GRANULARITIES = ("tensor", "global")
ADAPTS = ("both", "reduce", "enlarge")


def metabalance_scales(norms: jax.Array, ema: jax.Array, *, main: int,
                       relax_factor: float, beta: float, adapt: str
                       ) -> tuple[jax.Array, jax.Array]:
  """Scales [K, T] of each task's gradient in each part, from its norms
  [K, T]; returns (scales, new moving averages)."""
  ema = beta * ema + (1.0 - beta) * norms
  m_main = ema[main][None, :]
  positive = ema > 0
  # m_main / m_k, and 1 where task k has never had a gradient in this part
  # (its gradient is zero there, so any finite scale gives the same update;
  # the official code divides 0 by 0 there).
  ratio = jnp.where(positive, m_main / jnp.where(positive, ema, 1.0), 1.0)
  scaled = relax_factor * ratio + (1.0 - relax_factor)
  if adapt == "reduce":    # only auxiliary gradients larger than the main one
    scaled = jnp.where(ema > m_main, scaled, 1.0)
  elif adapt == "enlarge":  # only auxiliary gradients smaller than the main one
    scaled = jnp.where(ema < m_main, scaled, 1.0)
  scales = scaled.at[main].set(1.0)
  return scales, ema


@STRATEGIES.register("metabalance")
def metabalance(main: int = 0, relax_factor: float = 0.7, beta: float = 0.9,
                granularity: str = "tensor", adapt: str = "both",
                mode: Optional[str] = None) -> Strategy:
  """MetaBalance (He et al., WWW 2022): the main task with auxiliary tasks.

  Task `main` (an index in the experiment's task order; the first task by
  default) is the target.  For each part ``t`` of the shared parameters and
  each task ``k``, a moving average of the gradient norm is kept,

    m_kt <- beta m_kt + (1 - beta) ||g_kt||          (zeros at first)

  and each auxiliary gradient is rescaled toward the main one's magnitude:

    g_kt <- (r m_main,t / m_kt + (1 - r)) g_kt       (k != main)

  The main gradient is kept (its scale is 1), and the update is
  ``sum_k g_kt`` in every part.  ``r = relax_factor`` sets how close the
  magnitudes come: ``r = 1`` gives every auxiliary gradient the main one's
  (moving-average) norm, ``r = 0`` is the plain sum.  Without bias
  correction the first step's ratio is the plain norm ratio (both averages
  carry the same factor ``1 - beta``).

  Defaults: the paper's and the official code's, ``relax_factor = 0.7`` and
  ``beta = 0.9``; torchjd 0.18 and LibMTL have no MetaBalance.  The paper
  tunes ``r`` per dataset in [0, 1); ``r`` near 1 suits auxiliary tasks that
  help, smaller ``r`` keeps their own magnitudes.

  Parts (``granularity``): "tensor" (default, as the paper and the official
  optimizer, which balance "each part of the network" separately) keeps one
  average per shared parameter tensor; "global" uses one norm per task over
  all shared parameters, so the update is ``sum_k w_k g_k`` with scalar
  weights.  `aggregate` on a [K, P] matrix and rep mode see a single part, so
  the two coincide there.

  ``adapt`` (the paper's three strategies): "both" (default, the official
  code) rescales every auxiliary gradient; "reduce" only those whose average
  norm exceeds the main one's; "enlarge" only the smaller ones.

  Scale: sum-like (the main task's weight is 1 and auxiliary weights are 1
  when the magnitudes agree).  The reported weights are the scales averaged
  over the parts (exact with "global").  Task-specific parameters (towers)
  get their own unscaled gradient, as in the official code, which only
  rescales the shared parameters' gradients.

  Deliberate difference: where a task's average norm is zero (it has had no
  gradient in a part yet) its scale is 1 instead of the official 0 / 0.

  Not permutation-equivariant: the main task is singled out by its index.

  Rep mode (``mode="rep"``) balances the gradients w.r.t. the shared
  representation, one part; the official code balances the shared
  parameters only (the default).

  Args:
    main: index of the main (target) task.
    relax_factor: ``r`` in [0, 1].
    beta: moving-average rate of the gradient norms, in [0, 1).
    granularity: "tensor" (default) or "global".
    adapt: "both" (default), "reduce" or "enlarge".
    mode: 'params' (default) or 'rep'.
  """
  if int(main) != main or main < 0:
    raise ValueError(f"strategy 'metabalance': main must be a task index "
                     f">= 0, got {main!r}")
  main = int(main)
  if not 0.0 <= relax_factor <= 1.0:
    raise ValueError(f"strategy 'metabalance': relax_factor must be in "
                     f"[0, 1], got {relax_factor}")
  if not 0.0 <= beta < 1.0:
    raise ValueError(f"strategy 'metabalance': beta must be in [0, 1), got "
                     f"{beta}")
  if granularity not in GRANULARITIES:
    raise ValueError(f"strategy 'metabalance': granularity must be one of "
                     f"{GRANULARITIES}, got {granularity!r}")
  if adapt not in ADAPTS:
    raise ValueError(f"strategy 'metabalance': adapt must be one of "
                     f"{ADAPTS}, got {adapt!r}")
  mode = resolve_mode("metabalance", mode, "params")

  def check_main(k: int) -> None:
    if main >= k:
      raise ValueError(f"strategy 'metabalance': main={main} but there are "
                       f"only {k} tasks; set strategy.hparams.main to the "
                       f"index of the target task (0..{k - 1})")

  def init(num_tasks: int, *, row):
    check_main(num_tasks)
    parts = (1 if granularity == "global"
             else len(jax.tree_util.tree_leaves(row)))
    return {"norms": jnp.zeros((num_tasks, parts), jnp.float32)}

  def part_norms(leaves, k: int) -> jax.Array:
    """[K, T] norms of each task's gradient in each part."""
    sq = [jnp.sum(jnp.square(x.reshape(k, -1).astype(jnp.promote_types(
        x.dtype, jnp.float32))), axis=1) for x in leaves]
    if granularity == "global":
      sq = [sum(sq)]
    return jnp.sqrt(jnp.stack(sq, axis=1))

  def run(state, leaves, k: int):
    check_main(k)
    ema = state["norms"]
    norms = part_norms(leaves, k)
    if norms.shape != ema.shape:
      raise ValueError(
          f"strategy 'metabalance': gradients with {norms.shape[1]} parts "
          f"for a state built for {ema.shape[1]}; build the state with "
          f"init_state(K, row=...) for the same gradients")
    scales, new_ema = metabalance_scales(
        norms, ema.astype(norms.dtype), main=main, relax_factor=relax_factor,
        beta=beta, adapt=adapt)
    out = Weighting(jnp.mean(scales, axis=1),
                    {"norms": new_ema.astype(ema.dtype)}, {})
    return scales, out

  def aggregate_tree(state, *, stacked_grads, losses, step, key):
    del losses, step, key
    leaves, treedef = jax.tree_util.tree_flatten(stacked_grads)
    k = leaves[0].shape[0]
    scales, out = run(state, leaves, k)
    if granularity == "global":
      return combine_tree(scales[:, 0], stacked_grads), out
    combined = [combine_tree(scales[:, t], x) for t, x in enumerate(leaves)]
    return jax.tree_util.tree_unflatten(treedef, combined), out

  def aggregate(state, *, jacobian, losses, step, key):
    update, out = aggregate_tree(state, stacked_grads=jacobian,
                                 losses=losses, step=step, key=key)
    return update, out

  def aggregate_rep(state, *, rep_grads, rep, losses, step, key):
    del rep, losses, step, key
    k = rep_grads.shape[0]
    scales, out = run(state, [rep_grads], k)
    w = scales[:, 0].astype(rep_grads.dtype)
    return w.reshape((k,) + (1,) * (rep_grads.ndim - 1)) * rep_grads, out

  return Strategy(
      name="metabalance", kind="jacobian", init=init, aggregate=aggregate,
      aggregate_tree=aggregate_tree, aggregate_rep=aggregate_rep,
      default_mode=mode, row_state=True,
      hparams={"main": main, "relax_factor": relax_factor, "beta": beta,
               "granularity": granularity, "adapt": adapt, "mode": mode})
