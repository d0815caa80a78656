"""Auto-Lambda (Liu, Li, Kuang & Davison, "Auto-Lambda: Disentangling Dynamic
Task Relationships", TMLR 2022; official code lorenmt/auto-lambda).

The task weights lambda are meta-parameters, trained so that one SGD step of
the lambda-weighted training loss lowers the loss of the *primary* tasks on
another batch (the meta batch)::

  theta'(lambda) = theta - alpha * grad_theta sum_k lambda_k L_k(theta; train)
  meta loss      = sum_{k primary} L_k(theta'(lambda); meta batch)
  d meta / d lambda_k = -alpha * <grad_theta L_k(theta; train),
                                  grad_theta meta(theta')>

then one Adam step on lambda, and the network's step on
``sum_k lambda_k L_k(train)`` with the updated lambda (a loss-kind strategy).

Defaults are the official ``trainer_dense.py`` / ``auto_lambda.py``:
``weight_init = 0.1`` (``--autol_init``), meta optimiser
``torch.optim.Adam(lr=1e-4)`` (``--autol_lr``; optax's Adam has the same
defaults), a meta update at every step (``update_every = 1``), all tasks
primary (``--task all``, the multi-task setting), and the meta batch drawn
from the *training* split in a second, independent shuffle
(``meta_split = "train"``: the official "val_loader" is a copy of the train
loader).  ``meta_split = "val"`` draws it from the validation split, as in
the paper's text.  The weights are neither clipped nor kept positive
(neither are the official ones).  Scale: sum-like times ``weight_init``
(every weight starts at 0.1).

The step size alpha of the virtual step is the model optimiser's learning
rate at that step (the official ``scheduler.get_last_lr()``); the train loop
passes its schedule (`lr_schedule`), or set `virtual_lr` to a constant.

Deliberate differences from the official code:

* ``hessian="exact"`` (the default) takes the exact meta-gradient: the
  directional derivative of the K training losses along
  ``v = grad meta(theta')``, one forward-mode product ``J(theta) v`` through
  the linearisation that also gave the virtual step's gradient.  The official
  code approximates the same product ``J v`` by a central finite difference
  of the training losses at ``theta +- eps v``, ``eps = 0.01 / ||v||``
  (its ``compute_hessian``); ``hessian="finite_difference"`` does that.
  Since lambda enters theta' linearly, no second derivative is needed: the
  "Hessian" of the official names is ``d^2 (sum lambda L) / d theta d lambda
  = J``.
* The virtual step is plain SGD: the official step also adds SGD's momentum
  buffer and weight decay (``theta - alpha (m + g + wd theta)``), which only
  move the point theta' where the meta loss is read (they do not depend on
  lambda).  With optax optimisers (Adam, ...) there is no SGD momentum buffer
  to reuse.
* The dropout keys: the virtual step's training losses and their
  directional derivative share one key, and the meta batch gets another;
  both differ from the training step's own key (the official code draws
  fresh dropout for each forward pass too).

Cost per meta update: one forward + backward of the training batch (the
virtual step's gradient), one forward + backward of the meta batch at
theta', and one forward-mode product through the stored linearisation
(``finite_difference``: two more forward passes instead); then the usual
weighted training step.  No second-order pass.  `update_every = n` spends
it on every n-th step only.  Timed against `mean` by
``python -m benchmarks.strategies --strategies mean,auto_lambda`` (the
benchmark feeds the training batch as the meta batch).

Outside the train step (`aggregate`, `as_optax`) there is no meta batch:
the strategy applies its current weights unchanged, i.e. the fixed weights
``weight_init`` from a fresh state.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import optax

from mtrec_jax.registry import STRATEGIES
from mtrec_jax.weighting.base import Strategy, Weighting

META_PREFIX = "meta:"
_HESSIANS = ("exact", "finite_difference")
_SPLITS = ("train", "val")


def with_meta_batch(batch: dict, meta_batch: dict) -> dict:
  """One batch dict carrying the meta batch under ``meta:<key>`` (so it
  travels through the jitted step and its batch sharding unchanged)."""
  clash = [k for k in batch if k.startswith(META_PREFIX)]
  if clash:
    raise ValueError(f"batch keys {clash} already start with {META_PREFIX!r}")
  return {**batch, **{META_PREFIX + k: v for k, v in meta_batch.items()}}


def split_meta_batch(batch: dict) -> tuple[dict, Optional[dict]]:
  """(training batch, meta batch or None) from `with_meta_batch`'s dict."""
  train = {k: v for k, v in batch.items() if not k.startswith(META_PREFIX)}
  meta = {k[len(META_PREFIX):]: v for k, v in batch.items()
          if k.startswith(META_PREFIX)}
  return train, (meta or None)


@dataclasses.dataclass(frozen=True)
class MetaStrategy(Strategy):
  """A loss strategy that also updates its state from a meta batch before
  the training step (`mtrec_jax.train.step` calls `meta_update`).

  Attributes:
    meta_update: ``(state, *, losses_fn, params, batch, meta_batch, step, rng,
      names) -> (state, metrics)``, where ``losses_fn(params, batch, rng)``
      gives the K training losses of the model.
    meta_split: the split the loop draws the meta batches from.
  """
  meta_update: Optional[Callable] = None
  meta_split: str = "train"


def primary_mask(primary, names: Sequence[str]) -> jax.Array:
  """[K] 0/1 mask of the primary tasks, from task names or indices (None:
  all tasks)."""
  k = len(names)
  if primary is None:
    return jnp.ones((k,), jnp.float32)
  idx = []
  for p in primary:
    if isinstance(p, str):
      if p not in names:
        raise ValueError(f"strategy 'auto_lambda': primary task {p!r} is not "
                         f"a task of this run ({', '.join(names)})")
      idx.append(list(names).index(p))
    else:
      if not 0 <= int(p) < k:
        raise ValueError(f"strategy 'auto_lambda': primary task index {p} is "
                         f"out of range for {k} tasks")
      idx.append(int(p))
  return jnp.zeros((k,), jnp.float32).at[jnp.asarray(idx)].set(1.0)


def meta_gradient(losses_fn: Callable, params, weights: jax.Array, batch,
                  meta_batch, alpha, primary: jax.Array, rng,
                  hessian: str = "exact") -> tuple[jax.Array, jax.Array]:
  """d meta-loss / d lambda at `weights` (see the module docstring) and the
  meta loss at theta'.  ``losses_fn(params, batch, rng) -> [K]``."""
  r_train, r_meta = jax.random.split(rng)
  train_losses = lambda p: losses_fn(p, batch, r_train)
  losses, jvp = jax.linearize(train_losses, params)
  (grad,) = jax.linear_transpose(jvp, params)(
      weights.astype(losses.dtype))
  virtual = jax.tree_util.tree_map(
      lambda p, g: p - jnp.asarray(alpha, p.dtype) * g, params, grad)

  def meta_loss(p):
    val = losses_fn(p, meta_batch, r_meta)
    return jnp.sum(primary.astype(val.dtype) * val)

  value, v = jax.value_and_grad(meta_loss)(virtual)
  if hessian == "exact":
    jv = jvp(v)
  else:  # the official central difference, eps = 0.01 / ||v||
    norm = jnp.sqrt(sum(jnp.sum(jnp.square(x))
                        for x in jax.tree_util.tree_leaves(v)))
    # A zero meta gradient (v = 0) gives J v = 0; the official eps would be
    # infinite there.
    eps = 0.01 / jnp.where(norm > 0, norm, 1.0)
    shift = lambda s: jax.tree_util.tree_map(
        lambda p, d: p + (s * eps).astype(p.dtype) * d, params, v)
    jv = (train_losses(shift(1.0)) - train_losses(shift(-1.0))) / (2 * eps)
    jv = jnp.where(norm > 0, jv, 0.0)
  return -alpha * jv, value


@STRATEGIES.register("auto_lambda")
def auto_lambda(weight_init: float = 0.1, lr: float = 1e-4,
                primary: Optional[Sequence[Union[int, str]]] = None,
                meta_split: str = "train", update_every: int = 1,
                hessian: str = "exact", virtual_lr: Optional[float] = None,
                lr_schedule: Optional[Callable] = None,
                mode: Optional[str] = None) -> Strategy:
  """Auto-Lambda meta-learned task weights (see the module docstring).

  Args:
    weight_init: every task weight's initial value (official 0.1).
    lr: the meta optimiser's (Adam) learning rate (official 1e-4).
    primary: the primary tasks (names or indices into the run's tasks, the
      auxiliary tasks after the dataset's); None: all (multi-task learning).
    meta_split: "train" (a second shuffle of the training split, as the
      official code) or "val" (the validation split).
    update_every: meta update every n steps (1 = every step, official).
    hessian: "exact" (default) or "finite_difference" (official).
    virtual_lr: alpha of the virtual step; None: `lr_schedule(step)`.
    lr_schedule: the model optimiser's learning-rate schedule (the train loop
      passes it); used when `virtual_lr` is None.
    mode: accepted for interface uniformity; ignored (loss strategy).
  """
  name = "auto_lambda"
  if hessian not in _HESSIANS:
    raise ValueError(f"strategy {name!r}: hessian must be one of {_HESSIANS}, "
                     f"got {hessian!r}")
  if meta_split not in _SPLITS:
    raise ValueError(f"strategy {name!r}: meta_split must be one of "
                     f"{_SPLITS}, got {meta_split!r}")
  if int(update_every) != update_every or update_every < 1:
    raise ValueError(f"strategy {name!r}: update_every must be a positive "
                     f"integer, got {update_every}")
  if lr <= 0:
    raise ValueError(f"strategy {name!r}: lr must be > 0, got {lr}")
  if virtual_lr is not None and virtual_lr <= 0:
    raise ValueError(f"strategy {name!r}: virtual_lr must be > 0, got "
                     f"{virtual_lr}")
  if primary is not None:
    primary = tuple(primary)
    if not primary:
      raise ValueError(f"strategy {name!r}: primary is empty; name at least "
                       f"one task, or None for all")
  update_every = int(update_every)
  tx = optax.adam(lr)

  def init(num_tasks: int):
    w = jnp.full((num_tasks,), weight_init, jnp.float32)
    return {"weights": w, "opt": tx.init(w)}

  def weigh(state, *, losses, step, key):
    del losses, step, key
    return Weighting(state["weights"], state, {})

  def alpha_at(step):
    if virtual_lr is not None:
      return jnp.asarray(virtual_lr, jnp.float32)
    if lr_schedule is None:
      raise ValueError(
          f"strategy {name!r} needs the virtual step's learning rate: the "
          f"train loop passes the optimiser's schedule (lr_schedule); when "
          f"building the step yourself, set virtual_lr=<the model's lr>")
    return jnp.asarray(lr_schedule(step), jnp.float32)

  def meta_update(state, *, losses_fn, params, batch, meta_batch, step, rng,
                  names):
    if meta_batch is None:
      raise ValueError(
          f"strategy {name!r} needs a meta batch at every step: the train "
          f"loop feeds one; when calling the step yourself, pass "
          f"mtrec_jax.weighting.auto_lambda.with_meta_batch(batch, meta)")
    if len(names) != state["weights"].shape[0]:
      raise ValueError(f"strategy {name!r}: state has "
                       f"{state['weights'].shape[0]} weights for "
                       f"{len(names)} tasks")
    pri = primary_mask(primary, names)
    alpha = alpha_at(step)

    def update(state):
      grad, value = meta_gradient(losses_fn, params, state["weights"], batch,
                                  meta_batch, alpha, pri, rng, hessian)
      grad = grad.astype(state["weights"].dtype)
      updates, opt = tx.update(grad, state["opt"], state["weights"])
      return ({"weights": optax.apply_updates(state["weights"], updates),
               "opt": opt}, value.astype(jnp.float32))

    def skip(state):
      return state, jnp.zeros((), jnp.float32)

    if update_every == 1:
      new, value = update(state)
      done = jnp.ones((), jnp.float32)
    else:
      due = step % update_every == 0
      new, value = jax.lax.cond(due, update, skip, state)
      done = due.astype(jnp.float32)
    # meta_loss: the primary tasks' meta-batch loss at theta' (0 when the
    # step made no meta update; meta_updated says which).
    return new, {"meta_loss": value, "meta_updated": done}

  return MetaStrategy(
      name=name, kind="loss", init=init, weigh=weigh,
      hparams={"weight_init": weight_init, "lr": lr, "primary": primary,
               "meta_split": meta_split, "update_every": update_every,
               "hessian": hessian, "virtual_lr": virtual_lr, "mode": mode},
      meta_update=meta_update, meta_split=meta_split)
