"""The jitted train step: per-task losses -> strategy -> optimizer.

Per-task gradients are computed once, fused (docs/design.md, "Gradient
modes and Jacobian engines"): one forward pass and the K backward passes
batched with ``jax.vmap`` over the cotangents of one ``jax.vjp``.  Three
paths, by the strategy's kind and gradient mode:

* loss strategies: weights from the loss vector, then ONE backward pass of
  ``sum_k w_k L_k`` through the same VJP.
* gradient strategies, ``params`` mode: the Jacobian of the losses w.r.t.
  ``params['shared']`` (K rows), its Gramian, the strategy's weights (or
  update), and ``sum_k w_k g_k``; towers get their own task's gradient.
* gradient strategies, ``rep`` mode (LibMTL's ``rep_grad``): gradients w.r.t.
  the shared representation [K, B, H] (tower k reads slot k, so one backward
  pass of ``sum_k L_k`` yields every task's row), the weights from their
  Gramian, then ONE VJP through the shared part with the weighted cotangent.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax

from mtrec_jax.registry import unknown_name_message
from mtrec_jax.tasks.spec import TaskSpec
from mtrec_jax.train import dropout_bits as dropout_bits_lib
from mtrec_jax.train import optim
from mtrec_jax.train.state import TrainState
from mtrec_jax.weighting import sampling
from mtrec_jax.weighting.auto_lambda import split_meta_batch
from mtrec_jax.weighting.base import (Strategy, apply_strategy, cosines,
                                      gramian_of_tree)

Metrics = dict[str, jax.Array]


def task_losses(outputs: dict, batch: dict, tasks: Sequence[TaskSpec]) -> jax.Array:
  """The [K] vector of per-task losses, in task order."""
  return jnp.stack([t.loss(outputs[t.name], batch) for t in tasks])


def _weighting_metrics(names, weights, gram=None) -> Metrics:
  m = {f"weight/{n}": weights[i] for i, n in enumerate(names)}
  if gram is not None:
    cos = cosines(gram)
    for i in range(len(names)):
      for j in range(i + 1, len(names)):
        m[f"cos/{names[i]}/{names[j]}"] = cos[i, j]
  return m


def _all_finite(tree) -> jax.Array:
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def group_activity(metrics: dict, names: Sequence[str]):
  """Which parameter groups (`optim.group_of`) a step trains, from the
  strategy's metrics, or None when it trains all of them.

  Strategy `alternating` reports ``phase`` (block alternation: 0 trains
  everything but the connection module, 1 only the connection module) and
  ``active_task`` (round-robin: only that task's tower or auxiliary head is
  trained; the shared parameters are trained by it).  Returns
  ``{group: bool scalar}`` for every group of `optim.group_names(names)`.
  """
  phase = metrics.get("phase")
  task = metrics.get("active_task")
  if phase is None and task is None:
    return None
  yes = jnp.asarray(True)
  rest = yes if phase is None else (phase == 0)
  active = {optim.CONNECTION: yes if phase is None else (phase == 1),
            optim.REST: rest}
  for i, n in enumerate(names):
    active[optim.task_group(n)] = rest if task is None else rest & (task == i)
  return active


def _opt_state_group(path):
  """The group whose optimizer state a leaf belongs to (the key after
  ``inner_states`` of `optax.multi_transform`), or None (global state: the
  learning-rate schedule's count, the clip)."""
  names = optim.key_names(path)
  for a, b in zip(names, names[1:]):
    if a == "inner_states":
      return b
  return None


def freeze_groups(active: dict, names: Sequence[str], new, old,
                  opt_state: bool = False):
  """Keeps every leaf of an inactive group at `old` (`jnp.where`: the
  activity is traced under jit).  `new` / `old` are params-shaped trees
  (params, gradients, updates) or, with `opt_state`, optimizer states of
  `optim.make_optimizer(..., groups=names)`."""
  names = tuple(names)

  def pick(path, a, b):
    group = _opt_state_group(path) if opt_state else optim.group_of(path,
                                                                    names)
    if group is None:
      return a
    return jnp.where(active[group], a, b)

  return jax.tree_util.tree_map_with_path(pick, new, old)


def _check_grouped(strategy_name, params, opt_state, names, has_phase):
  """The optimizer must keep one state per group for a strategy that
  freezes groups; block alternation needs a connection module."""
  used = {optim.group_of(p, tuple(names))
          for p, _ in jax.tree_util.tree_leaves_with_path(params)}
  if has_phase and optim.CONNECTION not in used:
    raise ValueError(
        f"strategy {strategy_name!r} alternates blocks with the connection "
        f"module, but the model has no params['shared']['connection'] (e.g. "
        f"shared_bottom); use a model with one (mmoe, ple, cross_stitch, ...) "
        f"or drop `blocks`")
  found = {_opt_state_group(p)
           for p, _ in jax.tree_util.tree_leaves_with_path(opt_state)}
  missing = sorted(used - found)
  if missing:
    raise ValueError(
        f"strategy {strategy_name!r} freezes parameter groups, so the "
        f"optimizer must keep one state per group (groups {missing} have "
        f"none): build it with mtrec_jax.train.optim.make_optimizer(cfg, "
        f"num_steps, groups=<task names>) (the train loop does)")


def split_jacobian(represent, heads, params, engine: str = "vmap"):
  """Per-task gradients of a model split into a shared part and towers.

  `represent(params) -> rep [K, B, H]` and `heads(params, rep) -> losses
  [K]`, where task k's loss reads only rep[k] and its own tower.  One
  forward pass; ONE backward pass through the towers (a ones cotangent gives
  every tower its own task's gradient and every task its representation
  gradient, since tower k sees only rep[k]); then K backward passes through
  the shared part alone, batched ("vmap") or unrolled.  A whole-model
  Jacobian would also run every task's backward pass through all K towers.

  The Jacobian passes an optimization barrier: without it XLA fuses the
  backward matmuls into each of their consumers (the Gramian, the weighted
  combination) and computes them twice, a large share of the engine's own
  time on CPU (the engine's cost: `benchmarks/results/strategies_cpu_k4.md`,
  rows engine_*).

  Returns (losses [K], tower gradients (a params tree; each tower holds its
  own task's gradient), shared per-task gradients with a leading K axis).
  """
  rep, vjp_rep = jax.vjp(represent, params)
  losses, vjp_heads = jax.vjp(heads, params, rep)
  head_grads, rep_grads = vjp_heads(jnp.ones_like(losses))
  k = losses.shape[0]
  onehot = jnp.eye(k, dtype=rep_grads.dtype)[:, :, None, None]  # [K, K, 1, 1]
  if engine == "vmap":
    (jac,) = jax.vmap(lambda m: vjp_rep(m * rep_grads))(onehot)
  elif engine == "unrolled":
    rows = [vjp_rep(onehot[i] * rep_grads)[0] for i in range(k)]
    jac = jax.tree_util.tree_map(lambda *r: jnp.stack(r), *rows)
  else:
    raise ValueError(f"jacobian engine {engine!r} is not 'vmap' or 'unrolled'")
  return losses, head_grads, jax.lax.optimization_barrier(jac)


def aux_jacobian(aux_losses, params, names, engine: str = "vmap"):
  """Per-task gradients of auxiliary losses ``aux_losses(params) -> [A]``
  (self-supervised and knowledge tasks, which read the shared encoder
  directly): one forward pass, A backward passes (batched or unrolled).

  Returns (losses [A], each auxiliary head's own gradient {name: tree},
  the per-task gradient tree with a leading A axis).
  """
  losses, vjp = jax.vjp(aux_losses, params)
  onehot = jnp.eye(losses.shape[0], dtype=losses.dtype)
  if engine == "vmap":
    (jac,) = jax.vmap(vjp)(onehot)
  elif engine == "unrolled":
    rows = [vjp(onehot[i])[0] for i in range(losses.shape[0])]
    jac = jax.tree_util.tree_map(lambda *r: jnp.stack(r), *rows)
  else:
    raise ValueError(f"jacobian engine {engine!r} is not 'vmap' or 'unrolled'")
  jac = jax.lax.optimization_barrier(jac)
  own = {n: jax.tree_util.tree_map(lambda x, i=i: x[i], jac["aux"][n])
         for i, n in enumerate(names) if n in jac.get("aux", {})}
  return losses, own, jac


def _concat_rows(*trees):
  """Stacks per-task gradient trees (leading task axes) along that axis."""
  trees = [t for t in trees if t is not None]
  if len(trees) == 1:
    return trees[0]
  return jax.tree_util.tree_map(lambda *x: jnp.concatenate(x), *trees)


# `strategy.rep_gramian` (config.py): the Gramian of rep mode, see below.
REP_GRAMIANS = ("rows", "batch_sum")


def check_rep_gramian(name: str) -> str:
  """`name` if it is one of `REP_GRAMIANS`, else a ValueError naming the
  closest (the train loop checks the config's before anything runs)."""
  if name not in REP_GRAMIANS:
    raise ValueError(unknown_name_message("strategy.rep_gramian", name,
                                          REP_GRAMIANS) +
                     " ('rows': the representation Jacobian's Gramian; "
                     "'batch_sum': LibMTL's, gradients summed over the "
                     "batch first)")
  return name


def make_train_step(model, tasks: Sequence[TaskSpec], strategy: Strategy,
                    optimizer: optax.GradientTransformation,
                    mode: str = "", jacobian: str = "vmap",
                    rep_gramian: str = "rows",
                    dropout_bits: str = "threefry") -> Callable:
  """Returns ``step(state, batch) -> (state, metrics)`` (not yet jitted).

  `dropout_bits` ('threefry' or 'hash', `train.dropout_bits`): where the
  model's dropout masks draw their bits (`train/dropout_bits.py`).

  `jacobian` picks how params mode runs the K backward passes of one VJP:
  "vmap" (batched over the K cotangents) or "unrolled" (K VJP calls inside
  the same jitted step, sharing the forward pass); which is faster depends
  on the device and model (see benchmarks/strategies.py).

  `rep_gramian` picks the Gramian a "gramian" strategy sees in rep mode,
  from the representation gradients ``R [K, B, *F]``:

  * "rows" (the default): ``G = R_flat R_flat^T`` with ``R_flat [K, B*F]``,
    the Gramian of the Jacobian of the K losses with respect to the whole
    representation tensor (each example's gradient in its own coordinates,
    ``G_ij = sum_b <R_ib, R_jb>``);
  * "batch_sum": ``G = S S^T`` with ``S = sum_b R[:, b]`` ([K, F]), LibMTL's
    ``rep_grad=True`` (``AbsWeighting._get_grads``:
    ``per_grads.reshape(K, B, -1).sum(1)``; the weights are then applied to
    the unsummed ``per_grads``, as here).  Its norms ``||S_k||`` are those of
    the gradient w.r.t. one perturbation shared by every example, so
    per-example gradients that cancel over the batch do not count, and the
    order of the task norms can differ from "rows".

  "rows" is the default because it is the Gramian of the representation's
  actual Jacobian (the object the rep-mode docstrings describe), and the
  rep-mode runs stored so far used it; "batch_sum" reproduces LibMTL.  The
  weights are applied the same way in both (``cot_k = w_k R_k``).  Only
  "gramian" strategies in rep mode read it; a "jacobian" strategy in rep
  mode combines the rows themselves and rejects "batch_sum".
  """
  if jacobian not in ("vmap", "unrolled"):
    raise ValueError(f"jacobian engine {jacobian!r} is not 'vmap' or 'unrolled'")
  check_rep_gramian(rep_gramian)
  dropout_bits_lib.check(dropout_bits)

  def drop(key):
    return dropout_bits_lib.dropout_key(key, dropout_bits)

  tasks = tuple(tasks)
  k = len(tasks)
  aux_names = tuple(getattr(model, "aux_names", ()))
  names = tuple(t.name for t in tasks) + aux_names
  mode = mode or strategy.default_mode
  if mode not in ("params", "rep"):
    raise ValueError(f"gradient mode {mode!r} is not 'params' or 'rep'")
  if (rep_gramian == "batch_sum" and mode == "rep"
      and strategy.kind == "jacobian"):
    raise ValueError(
        f"strategy {strategy.name!r} combines the Jacobian rows themselves "
        f"(kind 'jacobian'), so rep_gramian='batch_sum' (a Gramian of the "
        f"batch-summed rows) does not apply to it; use rep_gramian='rows'")
  if aux_names and mode == "rep" and strategy.kind != "loss":
    raise ValueError(
        f"strategy {strategy.name!r} in rep mode needs every task to read the "
        f"shared representation, but the auxiliary tasks {list(aux_names)} "
        f"read the encoder directly; set strategy.mode=params")

  def split_rng(rng):
    """(task-model dropout, auxiliary dropout, auxiliary draws); without
    auxiliary tasks the task model keeps the step's key unchanged."""
    if not aux_names:
      return rng, None, None
    return tuple(jax.random.split(rng, 3))

  def aux_fn(batch, r_drop, r_aux):
    def losses(p):
      return model.apply({"params": p}, batch, r_aux, train=True,
                         rngs={"dropout": drop(r_drop)}, method="aux_losses")
    return losses

  def forward(params, batch, rng):
    r_main, r_drop, r_aux = split_rng(rng)
    parts = []
    if tasks:
      out = model.apply({"params": params}, batch, train=True,
                        rngs={"dropout": drop(r_main)})
      parts.append(task_losses(out, batch, tasks))
    if aux_names:
      parts.append(aux_fn(batch, r_drop, r_aux)(params))
    return jnp.concatenate(parts) if len(parts) > 1 else parts[0]

  def grads_loss_kind(state, batch, rng, key):
    losses, vjp = jax.vjp(lambda p: forward(p, batch, rng), state.params)
    out = strategy.weigh(state.strategy_state, losses=losses, step=state.step,
                         key=key)
    (grads,) = vjp(jax.lax.stop_gradient(out.weights).astype(losses.dtype))
    return losses, grads, out, None

  def represent_and_heads(batch, rng):
    r_enc, r_head = jax.random.split(rng)

    def represent(p):
      return model.apply({"params": p}, batch, train=True,
                         rngs={"dropout": drop(r_enc)}, method="represent")

    def heads(p, rep):
      out = model.apply({"params": p}, rep, train=True,
                        rngs={"dropout": drop(r_head)}, method="heads")
      return task_losses(out, batch, tasks)

    return represent, heads

  def weighted_own(own, weights, offset=0):
    """Tower k (or auxiliary head k) affects only L_k: its weighted gradient
    is w_k times its own (no second backward pass through the heads)."""
    if not strategy.weight_task_params:
      return own
    order = names[offset:]
    return {n: jax.tree_util.tree_map(
        lambda g, w=weights[offset + order.index(n)]: w.astype(g.dtype) * g,
        tree) for n, tree in own.items()}

  def weighted_towers(head_grads, weights):
    return weighted_own(head_grads["towers"], weights)

  def params_jacobian(params, batch, rng):
    """(losses [K], tower gradients, auxiliary heads' own gradients, the
    shared per-task gradients with a leading K axis) on one batch."""
    r_main, r_drop, r_aux = split_rng(rng)
    losses, jac_rows, head_grads, aux_own = [], [], None, None
    if tasks:
      represent, heads = represent_and_heads(batch, r_main)
      main_losses, head_grads, jac = split_jacobian(represent, heads,
                                                    params, jacobian)
      losses.append(main_losses)
      jac_rows.append(jac["shared"])
    if aux_names:
      a_losses, aux_own, a_jac = aux_jacobian(
          aux_fn(batch, r_drop, r_aux), params, aux_names, jacobian)
      losses.append(a_losses)
      jac_rows.append(a_jac["shared"])
    losses = jnp.concatenate(losses) if len(losses) > 1 else losses[0]
    return losses, head_grads, aux_own, _concat_rows(*jac_rows)

  def cross_gramian(params, samples, rng):
    """``G_ij = <J1_i, J2_j>`` from the shared Jacobians of the two sample
    batches: one pass, vmapped over the batches stacked on a new axis."""
    stacked = jax.tree_util.tree_map(lambda *b: jnp.stack(b), *samples)
    rngs = jax.random.split(rng, len(samples))
    jacs = jax.vmap(lambda b, r: params_jacobian(params, b, r)[3])(stacked,
                                                                   rngs)
    out = 0.0
    for leaf in jax.tree_util.tree_leaves(jacs):
      flat = leaf.reshape(leaf.shape[0], leaf.shape[1], -1)
      flat = flat.astype(jnp.promote_types(flat.dtype, jnp.float32))
      out = out + flat[0] @ flat[1].T
    return out

  def grads_params_mode(state, batch, rng, key, samples=None):
    grads = {}
    losses, head_grads, aux_own, shared_jac = params_jacobian(
        state.params, batch, rng)
    gram = gramian_of_tree(shared_jac)
    # Double sampling (MoDo, SDMGrad): the weights come from the cross
    # Gramian of two other batches and weigh this batch's rows; the
    # metrics' cosines stay this batch's.
    weigh_gram = (gram if samples is None else
                  cross_gramian(state.params, samples,
                                jax.random.fold_in(rng, 2)))
    shared_update, out = apply_strategy(
        strategy, state.strategy_state, losses=losses,
        stacked_grads=shared_jac, gram=weigh_gram, step=state.step, key=key)
    grads["shared"] = shared_update
    if "towers" in state.params:
      grads["towers"] = (weighted_towers(head_grads, out.weights) if tasks
                         else jax.tree_util.tree_map(jnp.zeros_like,
                                                     state.params["towers"]))
    if aux_names:
      grads["aux"] = weighted_own(aux_own, out.weights, offset=k)
    return losses, grads, out, gram

  def grads_rep_mode(state, batch, rng, key):
    represent, heads = represent_and_heads(batch, rng)
    rep, vjp_rep = jax.vjp(represent, state.params)
    losses, vjp_heads = jax.vjp(heads, state.params, rep)
    head_grads, rep_grads = vjp_heads(jnp.ones_like(losses))  # [K, B, H]
    rows = rep_grads.reshape(k, -1)
    if rep_gramian == "batch_sum":
      summed = jnp.sum(rep_grads.astype(jnp.float32), axis=1).reshape(k, -1)
      gram = summed @ summed.T
    else:
      gram = rows.astype(jnp.float32) @ rows.astype(jnp.float32).T
    if strategy.aggregate_rep is not None:
      cot, out = strategy.aggregate_rep(state.strategy_state,
                                        rep_grads=rep_grads, rep=rep,
                                        losses=losses, step=state.step,
                                        key=key)
    elif strategy.kind == "jacobian":
      vec, out = strategy.aggregate(state.strategy_state, jacobian=rows,
                                    losses=losses, step=state.step, key=key)
      # Every task slot receives the combined update / K, so a representation
      # broadcast to all tasks (shared-bottom) gets exactly the combined one.
      cot = jnp.broadcast_to(vec.reshape(rep.shape[1:]) / k, rep.shape)
    else:
      out = strategy.weigh(state.strategy_state, gramian=gram, losses=losses,
                           step=state.step, key=key)
      cot = out.weights.astype(rep_grads.dtype)[:, None, None] * rep_grads
    (shared_grads,) = vjp_rep(cot.astype(rep.dtype))
    grads = {"shared": shared_grads["shared"],
             "towers": weighted_towers(head_grads, out.weights)}
    return losses, grads, out, gram

  if strategy.kind == "loss":
    compute = grads_loss_kind
  elif mode == "params":
    compute = grads_params_mode
  else:
    compute = grads_rep_mode
  # Auto-Lambda: the strategy updates its weights from a meta batch (carried
  # in the batch as ``meta:<key>``, see auto_lambda.with_meta_batch) first.
  meta_update = getattr(strategy, "meta_update", None)
  # MoDo / SDMGrad: two more training batches (``sample1:``, ``sample2:``,
  # see weighting.sampling) for their weights, in params mode.
  sample_prefixes = (sampling.extra_batches(strategy, mode)[1]
                     if sampling.double_sampled(strategy, mode) else ())

  def train_step(state: TrainState, batch) -> tuple[TrainState, Metrics]:
    rng = jax.random.fold_in(state.rng, state.step)
    rng, key = jax.random.split(rng)
    prev_strategy_state, meta_metrics = state.strategy_state, {}
    if meta_update is not None:
      batch, meta_batch = split_meta_batch(batch)
      strategy_state, meta_metrics = meta_update(
          state.strategy_state, losses_fn=forward, params=state.params,
          batch=batch, meta_batch=meta_batch, step=state.step,
          rng=jax.random.fold_in(rng, 1), names=names)
      state = state.replace(strategy_state=strategy_state)
    if sample_prefixes:
      batch, samples = sampling.split_extra_batches(batch, sample_prefixes)
      if any(s is None for s in samples):
        raise ValueError(
            f"strategy {strategy.name!r} computes its weights from two more "
            f"training batches each step (keys {list(sample_prefixes)}): "
            f"the train loop feeds them; when calling the step yourself, "
            f"pass mtrec_jax.weighting.sampling.with_extra_batches(batch, "
            f"{{'sample1:': b1, 'sample2:': b2}}), or build the strategy "
            f"with independent_batches=False")
      losses, grads, out, gram = grads_params_mode(state, batch, rng, key,
                                                   samples)
    else:
      losses, grads, out, gram = compute(state, batch, rng, key)
    out = out._replace(metrics={**meta_metrics, **out.metrics})
    active = group_activity(out.metrics, names)
    if active is not None:  # strategy `alternating`: frozen groups
      _check_grouped(strategy.name, state.params, state.opt_state, names,
                     "phase" in out.metrics)
      # A frozen group's gradients are zero (so a global-norm clip sees only
      # the trained ones) ...
      grads = freeze_groups(active, names, grads,
                            jax.tree_util.tree_map(jnp.zeros_like, grads))
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if active is not None:
      # ... and, after the optimizer, its parameters and its whole optimizer
      # state (moments and count) are kept: it moves neither by momentum nor
      # leaves a trace, as a torch.optim.Adam parameter without a gradient.
      params = freeze_groups(active, names, params, state.params)
      opt_state = freeze_groups(active, names, opt_state, state.opt_state,
                                opt_state=True)
    finite = jnp.all(jnp.isfinite(losses)) & _all_finite(grads)
    # A non-finite step changes nothing but records where the run diverged.
    keep = lambda new, old: jax.tree_util.tree_map(
        lambda a, b: jnp.where(finite, a, b), new, old)
    new_state = state.replace(
        step=state.step + 1,
        params=keep(params, state.params),
        opt_state=keep(opt_state, state.opt_state),
        strategy_state=keep(out.state, prev_strategy_state),
        diverged_step=jnp.where((state.diverged_step < 0) & ~finite,
                                state.step, state.diverged_step))
    metrics = {f"loss/{n}": losses[i] for i, n in enumerate(names)}
    metrics["loss/total"] = jnp.sum(out.weights * losses)
    metrics.update(_weighting_metrics(names, out.weights, gram))
    metrics.update({f"strategy/{n}": v for n, v in out.metrics.items()})
    return new_state, metrics

  return train_step
