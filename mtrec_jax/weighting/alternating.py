"""Alternating schedules: `alternating` and `alternating_phase`.

Two kinds of alternation, usable together:

* Round-robin over tasks: at step t only task ``schedule[t mod len]`` is
  trained (weight one-hot), optionally times the weights of an inner
  strategy.
* Block alternation between parameter groups: `blocks = (T, C)` alternates
  T steps that train the towers with the cross-task connection module frozen
  (phase 0) and C steps that train only the connection module (phase 1).
  The strategy cannot freeze parameters itself; it reports the phase in
  ``Weighting.metrics["phase"]`` and the train step masks the updates (see
  `alternating`).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

from mtrec_jax.registry import STRATEGIES
from mtrec_jax.weighting.base import Strategy, Weighting
from mtrec_jax.weighting.loss_weighting import resolve_mode


def alternating_phase(step: Union[int, jax.Array], period_towers: int,
                      period_connection: int) -> Union[int, jax.Array]:
  """The block-alternation phase of a step: 0 = towers, 1 = connection.

  Steps ``0 .. period_towers - 1`` of every cycle of
  ``period_towers + period_connection`` steps are phase 0 (update the towers,
  connection module frozen), the rest phase 1 (update only the connection
  module).  Pure; a Python int step gives a Python int, an array step an int32
  array (jittable).
  """
  if period_towers < 1 or period_connection < 1:
    raise ValueError(f"alternating_phase: periods must be >= 1, got "
                     f"({period_towers}, {period_connection})")
  cycle = period_towers + period_connection
  if isinstance(step, (int, np.integer)):
    return int(step % cycle >= period_towers)
  step = jnp.asarray(step)
  return (step % cycle >= period_towers).astype(jnp.int32)


def freezes_groups(strategy: Strategy) -> bool:
  """Whether the train step freezes parameter groups for this strategy, so
  that its optimiser must keep one state per group."""
  return strategy.name == "alternating"


@STRATEGIES.register("alternating")
def alternating(schedule: Optional[Sequence[int]] = None,
                inner: Optional[str] = None,
                inner_hparams: Optional[dict] = None,
                blocks: Optional[Sequence[int]] = None,
                mode: Optional[str] = None,
                steps_per_epoch: Optional[int] = None) -> Strategy:
  """Alternating training schedules (round-robin tasks and/or blocks).

  Round-robin (the default, and whenever `schedule` is given): at step t the
  weights are ``inner_w * one_hot(schedule[t mod len(schedule)])``;
  `schedule` defaults to ``0, 1, ..., K-1`` and may repeat or omit tasks
  (e.g. ``(0, 0, 1)``).  Without `inner` the inner weights are 1, so the
  scale is sum-like (one task at weight 1 per step).  With `inner` (a
  registered strategy name, built with `inner_hparams` through
  `mtrec_jax.weighting.build`), this strategy takes the inner one's kind,
  state, default mode and metrics (prefixed ``inner_``); for a "jacobian"
  inner, the Jacobian rows of the inactive tasks are zeroed before its
  ``aggregate`` (or its per-tensor ``aggregate_tree``, or its
  representation form ``aggregate_rep``, whichever the inner one has and
  the train step uses) and the reported weights are the mask alone.  An
  inner strategy with per-parameter state (`Strategy.row_state`: MoCo,
  DB-MTL, ExcessMTL, MetaBalance) keeps it: this strategy then sets
  ``row_state`` too and passes ``init_state(K, row=...)``'s row on.  For gradient
  kinds ``weight_task_params`` is set, so the towers of inactive tasks get no
  gradient; the train step also freezes them and their optimiser state (see
  below), so they get no update at all.

  Block alternation (`blocks = (period_towers, period_connection)`): the
  phase ``alternating_phase(step, *blocks)`` goes to
  ``Weighting.metrics["phase"]`` (int32).  Without an explicit `schedule`
  every task is active in both phases (weights = the inner weights, or 1).

  Freezing is the train step's part (`mtrec_jax.train.step.group_activity`),
  from the metrics ``phase`` and ``active_task``: phase 0 freezes the
  connection module (``params['shared']['connection']``: cross-stitch units,
  MMoE/PLE gates, ...), phase 1 everything else; round-robin freezes the
  towers (and auxiliary heads) of the inactive tasks.  A frozen group gets
  exactly no update, and its whole optimiser state (moments and Adam's step
  count) stays as it was, as for a ``torch.optim.Adam`` parameter whose
  gradient is None: the optimiser keeps one state per group
  (`mtrec_jax.train.optim.make_optimizer(..., groups=task names)`, which the
  train loop builds when `freezes_groups` says so).  Zeroing the weights or
  gradients alone is not enough: Adam's momentum would still move the frozen
  parameters, and one shared step count would give a group the bias
  correction of steps it did not take.

  Args:
    schedule: task indices cycled over, one per step.
    inner: name of a strategy whose weights are masked; None means weights 1.
    inner_hparams: hyper-parameters for `inner`.
    blocks: ``(period_towers, period_connection)`` in steps, or None.
    mode: "params" or "rep"; overrides the (inner's) default mode.
    steps_per_epoch: passed on to `inner` when its factory takes it and
      `inner_hparams` does not set it (the train loop gives it, see `dwa`).
  """
  name = "alternating"
  schedule_t = None if schedule is None else tuple(int(i) for i in schedule)
  if schedule_t is not None and not schedule_t:
    raise ValueError(f"strategy {name!r}: schedule must not be empty")
  blocks_t = None if blocks is None else tuple(int(b) for b in blocks)
  if blocks_t is not None:
    if len(blocks_t) != 2 or min(blocks_t) < 1:
      raise ValueError(f"strategy {name!r}: blocks must be two positive step "
                       f"counts (period_towers, period_connection), got "
                       f"{blocks}")
  round_robin = blocks_t is None or schedule_t is not None
  inner_hparams = dict(inner_hparams or {})
  if inner is not None:
    # Imported here: the package imports this module while it loads.
    import inspect

    from mtrec_jax import weighting as _weighting
    extra = {}
    if (steps_per_epoch is not None and "steps_per_epoch" not in inner_hparams
        and "steps_per_epoch" in inspect.signature(
            STRATEGIES.get(inner)).parameters):
      extra["steps_per_epoch"] = steps_per_epoch
    inner_s = _weighting.build(inner, **inner_hparams, **extra)
    if inner_s.name == name:
      raise ValueError(f"strategy {name!r} cannot wrap itself")
  else:
    if inner_hparams:
      raise ValueError(f"strategy {name!r}: inner_hparams given without inner")
    inner_s = None
  kind = "loss" if inner_s is None else inner_s.kind

  def check_schedule(k: int):
    if schedule_t is not None:
      bad = [i for i in schedule_t if not 0 <= i < k]
      if bad:
        raise ValueError(f"strategy {name!r}: schedule has task indices {bad} "
                         f"outside 0..{k - 1}")

  def mask_and_metrics(k: int, step, dtype):
    step = jnp.asarray(step)
    metrics = {}
    if round_robin:
      order = jnp.asarray(schedule_t if schedule_t is not None else range(k),
                          jnp.int32)
      task = order[step % order.shape[0]]
      mask = jax.nn.one_hot(task, k, dtype=dtype)
      metrics["active_task"] = task
    else:
      mask = jnp.ones((k,), dtype)
    if blocks_t is not None:
      metrics["phase"] = alternating_phase(step, *blocks_t)
    return mask, metrics

  def combine(inner_out: Optional[Weighting], mask, metrics, state):
    if inner_out is None:
      return Weighting(mask, state, metrics)
    merged = {f"inner_{key}": v for key, v in inner_out.metrics.items()}
    merged.update(metrics)
    return Weighting(inner_out.weights * mask, {"inner": inner_out.state},
                     merged)

  def init(num_tasks: int, *, row=None):
    check_schedule(num_tasks)
    if inner_s is None:
      return ()
    # `init_state` passes `row` on only to an inner with per-parameter state.
    return {"inner": inner_s.init_state(num_tasks, row=row)}

  def weigh_loss(state, *, losses, step, key):
    k = jnp.shape(losses)[0]
    check_schedule(k)
    mask, metrics = mask_and_metrics(k, step, jnp.float32)
    out = None
    if inner_s is not None:
      out = inner_s.weigh(state["inner"], losses=losses, step=step, key=key)
    return combine(out, mask, metrics, state)

  def weigh_gramian(state, *, gramian, losses, step, key):
    k = gramian.shape[0]
    check_schedule(k)
    mask, metrics = mask_and_metrics(k, step, jnp.float32)
    out = inner_s.weigh(state["inner"], gramian=gramian, losses=losses,
                        step=step, key=key)
    return combine(out, mask, metrics, state)

  def aggregate_jacobian(state, *, jacobian, losses, step, key):
    k = jacobian.shape[0]
    check_schedule(k)
    mask, metrics = mask_and_metrics(k, step, jacobian.dtype)
    update, out = inner_s.aggregate(state["inner"],
                                    jacobian=jacobian * mask[:, None],
                                    losses=losses, step=step, key=key)
    return update, combine(mask_only(out), mask, metrics, state)

  def mask_only(out: Weighting) -> Weighting:
    # The inner "jacobian" weights are for logging only; report the mask so
    # that weight_task_params masks the towers exactly.
    return Weighting(jnp.ones_like(out.weights), out.state, out.metrics)

  def aggregate_tree(state, *, stacked_grads, losses, step, key):
    leaves = jax.tree_util.tree_leaves(stacked_grads)
    k = leaves[0].shape[0]
    check_schedule(k)
    mask, metrics = mask_and_metrics(k, step, jnp.float32)
    masked = jax.tree_util.tree_map(
        lambda g: g * mask.astype(g.dtype).reshape((k,) + (1,) * (g.ndim - 1)),
        stacked_grads)
    update, out = inner_s.aggregate_tree(state["inner"], stacked_grads=masked,
                                         losses=losses, step=step, key=key)
    return update, combine(mask_only(out), mask, metrics, state)

  def aggregate_rep(state, *, rep_grads, rep, losses, step, key):
    k = rep_grads.shape[0]
    check_schedule(k)
    mask, metrics = mask_and_metrics(k, step, rep_grads.dtype)
    masked = rep_grads * mask.reshape((k,) + (1,) * (rep_grads.ndim - 1))
    cot, out = inner_s.aggregate_rep(state["inner"], rep_grads=masked,
                                     rep=rep, losses=losses, step=step,
                                     key=key)
    return cot, combine(mask_only(out), mask, metrics, state)

  hparams = {"schedule": None if schedule_t is None else list(schedule_t),
             "inner": inner, "inner_hparams": inner_hparams,
             "blocks": None if blocks_t is None else list(blocks_t),
             "mode": mode, "steps_per_epoch": steps_per_epoch}
  default_mode = resolve_mode(
      name, mode, "params" if inner_s is None else inner_s.default_mode)
  weight_task_params = (kind != "loss" and round_robin) or (
      inner_s is not None and inner_s.weight_task_params)
  # An inner strategy with per-parameter state gets the row shape through
  # `init_state`; its per-tensor and representation forms are forwarded.
  row_state = inner_s is not None and inner_s.row_state
  if kind == "jacobian":
    return Strategy(
        name=name, kind=kind, init=init, aggregate=aggregate_jacobian,
        aggregate_tree=(aggregate_tree if inner_s.aggregate_tree is not None
                        else None),
        aggregate_rep=(aggregate_rep if inner_s.aggregate_rep is not None
                       else None),
        default_mode=default_mode, weight_task_params=weight_task_params,
        hparams=hparams, row_state=row_state)
  return Strategy(name=name, kind=kind, init=init,
                  weigh=weigh_loss if kind == "loss" else weigh_gramian,
                  default_mode=default_mode,
                  weight_task_params=weight_task_params, hparams=hparams,
                  row_state=row_state)
