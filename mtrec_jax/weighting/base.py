"""The weighting-strategy interface.

A strategy turns K per-task losses (and, for gradient methods, per-task
gradients) into one update.  Three kinds exist, by what a strategy looks at:

* ``"loss"``: weights from the loss vector (and the strategy's own state).
  The train step back-propagates ``sum_k w_k L_k`` once.  Task-specific
  parameters receive the weighted gradient too, as in LibMTL.
* ``"gramian"``: weights from the K x K Gramian ``G = J J^T`` of the per-task
  gradients (w.r.t. the shared parameters, or the shared representation in
  ``rep`` mode).  The shared update is ``sum_k w_k g_k`` (one contraction, or
  one VJP with ``w`` in representation mode).  MGDA, CAGrad, PCGrad, UPGrad,
  Nash-MTL, ... all reduce to such a weight vector.
* ``"jacobian"``: the combined update is a non-linear function of the [K, P]
  Jacobian (e.g. GradDrop's sign masking); ``aggregate`` returns it directly.

For gradient kinds, task-specific parameters (the towers) get their own task's
unweighted gradient unless ``weight_task_params`` is set (LibMTL's convention).

All functions are pure and jittable; the strategy state is a pytree that lives
in the train state, so it is checkpointed and sharded with everything else.

Per-parameter state: a few strategies keep arrays shaped by the Jacobian
rows: [K, P] momentum buffers or accumulated squared gradients (MoCo, DB-MTL,
ExcessMTL), or one statistic per parameter tensor (MetaBalance).  They set
``row_state=True`` and their ``init`` takes ``row=``, the shape of one
Jacobian row: a pytree of arrays or `jax.ShapeDtypeStruct` shaped like the
(unstacked) gradient, or an int P for a flat [P] row.  Always build states
with `Strategy.init_state`, which passes ``row`` only to those strategies.
Who knows the row: `aggregate` (P = the Jacobian's columns), `as_optax` (the
params it is initialised with) and the train state (``params['shared']`` in
"params" mode, one example's flattened representation in "rep" mode).

`as_optax` wraps any strategy as an ``optax.GradientTransformationExtraArgs``
that takes *stacked per-task gradients* (every leaf has a leading task axis of
size K) and keyword-only extras ``task_losses``, ``step`` and ``key``, so it
chains with any optimizer: ``optax.chain(as_optax(s, K), optax.adam(1e-3))``.
"""
from __future__ import annotations

import functools
import math
import operator

import dataclasses
from typing import Any, Callable, Literal, NamedTuple, Optional

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any
Kind = Literal["loss", "gramian", "jacobian"]


class Weighting(NamedTuple):
  """What one strategy call returns.

  weights: [K] task weights actually applied (for "jacobian" strategies, the
    weights reported for logging, e.g. the mean, since the update is not linear).

  state: the new strategy state.
  metrics: extra scalars to log (a flat dict name -> scalar array); may be {}.
  """
  weights: jax.Array
  state: PyTree
  metrics: dict


@dataclasses.dataclass(frozen=True)
class Strategy:
  """One task-weighting strategy (built by a registered factory).

  Attributes:
    name: the registry name.
    kind: "loss", "gramian" or "jacobian" (see the module docstring).
    init: ``num_tasks -> state`` (any pytree of arrays; ``()`` when stateless),
      or ``(num_tasks, *, row) -> state`` when `row_state` is set (``row``: a
      pytree of `jax.ShapeDtypeStruct` shaped like one Jacobian row; see
      `row_template`).
    weigh: for "loss": ``(state, *, losses, step, key) -> Weighting``
      (``key`` may be None: see `apply_strategy`);
      for "gramian": ``(state, *, gramian, losses, step, key) -> Weighting``.
    aggregate: for "jacobian" only:
      ``(state, *, jacobian, losses, step, key) -> (update [P], Weighting)``.
    aggregate_tree: optional, for "jacobian" strategies that treat each
      parameter tensor separately (MetaBalance):
      ``(state, *, stacked_grads, losses, step, key) -> (update tree,
      Weighting)``; `apply_strategy` uses it instead of ``aggregate`` on the
      flattened rows whenever it has the stacked pytree.
    aggregate_rep: optional, for "jacobian" strategies that use the batch
      structure of representation gradients (GradDrop's batch-reduced
      purity): ``(state, *, rep_grads [K, B, *F], rep [K, B, *F], losses,
      step, key) -> (cotangents [K, B, *F], Weighting)``, one cotangent per
      task slot of the representation.  Used in "rep" mode instead of
      ``aggregate`` on the flattened rows.
    default_mode: "params" (gradients w.r.t. shared parameters) or "rep"
      (w.r.t. the shared representation); ignored for "loss" strategies.
    weight_task_params: apply the weights to task-specific parameters too.
    hparams: the hyper-parameters the factory was called with (for logging).
    row_state: the state is shaped by the Jacobian rows, so ``init`` needs
      ``row=``; build states with `init_state`, which checks it is given.
  """
  name: str
  kind: Kind
  init: Callable[[int], PyTree]
  weigh: Optional[Callable[..., Weighting]] = None
  aggregate: Optional[Callable[..., tuple[jax.Array, Weighting]]] = None
  aggregate_tree: Optional[Callable[..., tuple[PyTree, Weighting]]] = None
  aggregate_rep: Optional[Callable[..., tuple[jax.Array, Weighting]]] = None
  default_mode: Literal["params", "rep"] = "params"
  weight_task_params: bool = False
  hparams: dict = dataclasses.field(default_factory=dict)
  row_state: bool = False

  def __post_init__(self):
    if self.kind not in ("loss", "gramian", "jacobian"):
      raise ValueError(f"strategy {self.name!r}: unknown kind {self.kind!r}")
    if self.kind == "jacobian" and self.aggregate is None:
      raise ValueError(f"strategy {self.name!r}: kind 'jacobian' needs aggregate")
    if self.kind != "jacobian" and self.weigh is None:
      raise ValueError(f"strategy {self.name!r}: kind {self.kind!r} needs weigh")

  @property
  def uses_gradients(self) -> bool:
    return self.kind != "loss"

  def init_state(self, num_tasks: int, row=None) -> PyTree:
    """The fresh strategy state for `num_tasks` tasks.

    `row` is the shape of one Jacobian row the strategy will see (see
    `row_template`); it is passed on only to strategies with `row_state`
    (and required by them), so callers may always give it.
    """
    if not self.row_state:
      return self.init(num_tasks)
    if row is None:
      raise ValueError(
          f"strategy {self.name!r} keeps per-parameter state and needs the "
          f"shape of the Jacobian rows: call init_state(num_tasks, row=...) "
          f"with the shared parameters (params mode), one example's "
          f"representation size (rep mode) or the row length P")
    return self.init(num_tasks, row=row_template(row))


def row_template(row) -> PyTree:
  """One Jacobian row as a pytree of `jax.ShapeDtypeStruct`: from a pytree of
  arrays (e.g. the shared parameters) or structs, or from an int P (a flat
  float32 row of length P)."""
  if isinstance(row, (int, np.integer)) and not isinstance(row, bool):
    if row < 1:
      raise ValueError(f"a Jacobian row needs a positive length, got {row}")
    return jax.ShapeDtypeStruct((int(row),), jnp.float32)
  leaves = jax.tree_util.tree_leaves(row)
  if not leaves:
    raise ValueError("the Jacobian row template is an empty pytree: pass the "
                     "parameters the strategy weighs, or an int length P")
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), row)


def tree_size(tree: PyTree) -> int:
  """The number of scalars in a pytree: P of the Jacobian rows it flattens to
  (`ravel_stacked` flattens a stacked tree of this structure to [K, P])."""
  return int(sum(math.prod(np.shape(x))
                 for x in jax.tree_util.tree_leaves(tree)))


def gramian(jacobian: jax.Array) -> jax.Array:
  """G = J J^T for a [K, P] Jacobian, accumulated in float32 or wider."""
  dtype = jnp.promote_types(jacobian.dtype, jnp.float32)
  j = jacobian.astype(dtype)
  return j @ j.T


def gramian_of_tree(stacked: PyTree) -> jax.Array:
  """G = J J^T where J's rows are the per-task gradients of a stacked pytree."""
  leaves = jax.tree_util.tree_leaves(stacked)
  if not leaves:
    raise ValueError("gramian_of_tree: empty gradient pytree")
  out = 0.0
  for leaf in leaves:
    flat = leaf.reshape(leaf.shape[0], -1)
    out = out + gramian(flat)
  return out


def cosines(gram: jax.Array, eps: float = 1e-20) -> jax.Array:
  """Pairwise cosine similarities of task gradients, from their Gramian."""
  d = jnp.sqrt(jnp.maximum(jnp.diag(gram), eps))
  return gram / (d[:, None] * d[None, :])


def combine_tree(weights: jax.Array, stacked: PyTree) -> PyTree:
  """sum_k w_k g_k for a stacked pytree (leading task axis).

  Unrolled over the K tasks on purpose: XLA:CPU compiles a contraction over
  a short leading axis (tensordot, sum(axis=0)) into a slow column reduction,
  several times slower than the whole combination should take; K scaled
  adds fuse into one elementwise pass on every backend.
  """
  def combine(g):
    w = weights.astype(g.dtype)
    return functools.reduce(operator.add,
                            (w[i] * g[i] for i in range(g.shape[0])))
  return jax.tree_util.tree_map(combine, stacked)


def ravel_stacked(stacked: PyTree) -> tuple[jax.Array, Callable]:
  """Flattens a stacked pytree into a [K, P] matrix and returns an unravel fn
  mapping a [P] vector back to the (unstacked) pytree."""
  one = jax.tree_util.tree_map(lambda g: g[0], stacked)
  _, unravel = jax.flatten_util.ravel_pytree(one)
  flat = jax.vmap(lambda t: jax.flatten_util.ravel_pytree(t)[0])(stacked)
  return flat, unravel


def apply_strategy(strategy: Strategy, state: PyTree, *, losses: jax.Array,
                   stacked_grads: Optional[PyTree] = None,
                   gram: Optional[jax.Array] = None,
                   step=0, key=None) -> tuple[Optional[PyTree], Weighting]:
  """Runs one strategy on stacked per-task gradients (or only losses).

  Returns ``(update, weighting)``; update is None for "loss" strategies when
  no gradients were given (the caller back-propagates ``sum_k w_k L_k``).
  """
  step = jnp.asarray(step)
  # key stays None when not given: strategies with a random task order
  # (PCGrad, GradVac) then use the fixed order 0..K-1; purely random ones
  # (RLW) fall back to PRNGKey(0).
  if strategy.kind == "loss":
    out = strategy.weigh(state, losses=losses, step=step, key=key)
    update = None if stacked_grads is None else combine_tree(out.weights,
                                                             stacked_grads)
    return update, out
  if stacked_grads is None and strategy.kind == "jacobian":
    raise ValueError(f"strategy {strategy.name!r} needs the per-task gradients")
  if strategy.kind == "gramian":
    if gram is None:
      gram = gramian_of_tree(stacked_grads)
    out = strategy.weigh(state, gramian=gram, losses=losses, step=step, key=key)
    update = None if stacked_grads is None else combine_tree(out.weights,
                                                             stacked_grads)
    return update, out
  if strategy.aggregate_tree is not None:
    return strategy.aggregate_tree(state, stacked_grads=stacked_grads,
                                   losses=losses, step=step, key=key)
  flat, unravel = ravel_stacked(stacked_grads)
  vec, out = strategy.aggregate(state, jacobian=flat, losses=losses, step=step,
                                key=key)
  return unravel(vec), out


class OptaxStrategyState(NamedTuple):
  inner: PyTree
  weights: jax.Array  # the last weights applied, for logging


def as_optax(strategy: Strategy, num_tasks: int
             ) -> optax.GradientTransformationExtraArgs:
  """Wraps a strategy as an optax transformation over stacked per-task grads.

  ``update(stacked_grads, state, params=None, *, task_losses, step=0, key=None)``
  returns the combined (unstacked) update.  ``task_losses`` is required for
  loss-based strategies and optional (defaults to ones) for gradient ones.
  A strategy with per-parameter state (`Strategy.row_state`) shapes it from
  the params given to ``init`` (one row of the stacked gradients).
  """

  def init_fn(params):
    if strategy.row_state and params is None:
      raise ValueError(f"strategy {strategy.name!r} keeps per-parameter "
                       f"state: initialise as_optax with the params")
    # float32, not weakly typed: the state keeps one dtype across updates,
    # so a jitted step does not recompile after the first call.
    return OptaxStrategyState(strategy.init_state(num_tasks, row=params),
                              jnp.full((num_tasks,), 1.0 / num_tasks,
                                       jnp.float32))

  def update_fn(updates, state, params=None, *, task_losses=None, step=0,
                key=None, **extra_args):
    del params, extra_args
    if task_losses is None:
      if strategy.kind == "loss":
        raise ValueError(f"strategy {strategy.name!r} needs task_losses=")
      task_losses = jnp.ones((num_tasks,))
    update, out = apply_strategy(strategy, state.inner, losses=task_losses,
                                 stacked_grads=updates, step=step, key=key)
    return update, OptaxStrategyState(out.state,
                                      out.weights.astype(state.weights.dtype))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
