"""Loss-based weightings: `max`, `uncertainty`, `dwa`, `rlw`, `gls`, `famo`.

Each strategy maps the loss vector ``L in R^K`` (and its own state) to task
weights ``w``; the train step back-propagates ``sum_k w_k L_k`` once.  The
losses are always read through `jax.lax.stop_gradient`, so the weights are
constants for that backward pass (what every paper here prescribes).

Scale conventions: "sum-like" means equal weights of 1 per task (the update of
``sum_k L_k``), "mean-like" means weights on the simplex (the update of
``mean_k L_k``).  Each docstring states which one its strategy follows.

This module also holds the small helpers shared by the strategies that train
their own parameters inside ``weigh`` (`uncertainty`, `famo`, and
`gradnorm` / `imtl_l` in sibling modules): `resolve_mode`, `own_optimizer`
(optax's Adam or SGD) and `own_step`.  Their states are dicts of arrays and
optax states (pytrees), so they checkpoint like any other part of the train
state.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import optax

from mtrec_jax.registry import STRATEGIES
from mtrec_jax.weighting.base import Strategy, Weighting

_MODES = ("params", "rep")
_OPTIMIZERS = ("adam", "sgd")


# --------------------------------------------------------------------------
# Shared helpers.
# --------------------------------------------------------------------------


def resolve_mode(name: str, mode: Optional[str], default: str) -> str:
  """Returns `mode`, or `default` when it is None, after validating it."""
  if mode is None:
    return default
  if mode not in _MODES:
    raise ValueError(f"strategy {name!r}: mode must be one of {_MODES}, "
                     f"got {mode!r}")
  return mode


def check_optimizer(name: str, optimizer: str) -> None:
  if optimizer not in _OPTIMIZERS:
    raise ValueError(f"strategy {name!r}: optimizer must be one of "
                     f"{_OPTIMIZERS}, got {optimizer!r}")


def own_optimizer(optimizer: str, lr: float,
                  weight_decay: float = 0.0) -> optax.GradientTransformation:
  """The optimiser of a strategy's own [K] parameters: ``optax.sgd(lr)`` or
  ``optax.adam(lr)``, whose defaults (b1 0.9, b2 0.999, eps 1e-8 added to
  the square root of the bias-corrected second moment) are
  ``torch.optim.Adam``'s, which the reference implementations use.
  `weight_decay` adds ``weight_decay * params`` to the gradient first, as
  ``torch.optim.Adam(weight_decay=...)`` (L2, not AdamW's decoupled decay)."""
  tx = optax.sgd(lr) if optimizer == "sgd" else optax.adam(lr)
  if weight_decay:
    tx = optax.chain(optax.add_decayed_weights(weight_decay), tx)
  return tx


def own_step(tx: optax.GradientTransformation, params: jax.Array,
             grads: jax.Array, state) -> tuple[jax.Array, Any]:
  """One step of `own_optimizer` on the parameters: (new params, new state)."""
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state


def _f32(x) -> jax.Array:
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _loss_strategy(name: str, init, weigh, hparams: dict,
                   mode: Optional[str]) -> Strategy:
  return Strategy(name=name, kind="loss", init=init, weigh=weigh,
                  default_mode=resolve_mode(name, mode, "params"),
                  hparams=dict(hparams, mode=mode))


def _stateless(num_tasks: int):
  del num_tasks
  return ()


# --------------------------------------------------------------------------
# Worst-task weighting.
# --------------------------------------------------------------------------


@STRATEGIES.register("max")
def max_(temperature: float = 0.0, mode: Optional[str] = None) -> Strategy:
  """Worst-task weighting: minimise the largest task loss (mean-like scale).

  With ``temperature == 0`` (the default) the weights are the one-hot vector
  of ``argmax_k L_k`` (ties go to the lowest index), i.e. the (sub)gradient of
  ``max_k L_k``.  With ``temperature = tau > 0`` the weights are
  ``softmax(L / tau)``, the gradient of the smooth maximum
  ``tau * logsumexp(L / tau)``; ``tau -> 0`` recovers the hard max and
  ``tau -> inf`` the mean.  Both weightings lie on the simplex (mean-like).

  Args:
    temperature: smoothing temperature ``tau >= 0``.
    mode: accepted for interface uniformity; ignored (loss strategy).
  """
  if temperature < 0:
    raise ValueError(f"strategy 'max': temperature must be >= 0, got "
                     f"{temperature}")

  def weigh(state, *, losses, step, key):
    del step, key
    losses = jax.lax.stop_gradient(_f32(losses))
    if temperature > 0:
      w = jax.nn.softmax(losses / temperature)
    else:
      w = jax.nn.one_hot(jnp.argmax(losses), losses.shape[0],
                         dtype=losses.dtype)
    return Weighting(w, state, {"max_loss": jnp.max(losses)})

  return _loss_strategy("max", _stateless, weigh,
                        {"temperature": temperature}, mode)


# --------------------------------------------------------------------------
# Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).
# --------------------------------------------------------------------------


@STRATEGIES.register("uncertainty")
def uncertainty(task_types: Optional[Sequence[str]] = None, lr: float = 1e-3,
                optimizer: str = "adam", init: float = 0.0,
                mode: Optional[str] = None) -> Strategy:
  """Homoscedastic-uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

  Each task has a learnable log-variance ``s_k = log sigma_k^2`` kept in the
  strategy state (initialised at `init`, 0 by default, i.e. sigma = 1) and
  trained inside ``weigh`` by one step of its own optimiser on the paper's
  objective, with the loss values held fixed:

    regression (Gaussian likelihood):      L / (2 sigma^2) + log sigma
                                         = 0.5 exp(-s) L + s / 2
    classification (scaled softmax):       L / sigma^2 + log sigma
                                         = exp(-s) L + s / 2

  The weights reported and applied are the effective loss multipliers
  ``0.5 exp(-s_k)`` (regression) or ``exp(-s_k)`` (classification), computed
  from ``s`` *before* this step's update (the paper trains ``s`` jointly with
  the network, so both see the same ``s`` in one step).  At the optimum of the
  objective ``s_k = log L_k`` for regression and ``log(2 L_k)`` for
  classification.

  Scale: sum-like (regression weights start at 0.5, classification at 1).

  Variants: LibMTL's ``UW`` uses the regression form for every task with
  ``s`` initialised at -0.5 (``task_types=None, init=-0.5`` here); the also
  common ``exp(-s) L + s`` form is exactly twice the regression objective
  (same optimum, weights doubled).  The paper and LibMTL update ``s`` with
  the network's optimiser; here ``s`` has its own: Adam (PyTorch defaults) with
  ``lr = 1e-3`` unless set otherwise -- set `lr` to the network's learning
  rate to mirror the paper.

  Args:
    task_types: one of "regression" / "classification" per task (in the
      experiment's task order); None means all regression.
    lr: learning rate of the log-variances.
    optimizer: "adam" or "sgd".
    init: initial log-variance of every task.
    mode: accepted for interface uniformity; ignored (loss strategy).
  """
  check_optimizer("uncertainty", optimizer)
  if task_types is not None:
    task_types = tuple(task_types)
    bad = [t for t in task_types if t not in ("regression", "classification")]
    if bad:
      raise ValueError(f"strategy 'uncertainty': task types must be "
                       f"'regression' or 'classification', got {bad}")

  def coefficients(k: int) -> jax.Array:
    if task_types is None:
      return jnp.full((k,), 0.5, jnp.float32)
    if len(task_types) != k:
      raise ValueError(f"strategy 'uncertainty': {len(task_types)} task types "
                       f"given for {k} tasks; give one per task")
    return jnp.asarray([1.0 if t == "classification" else 0.5
                        for t in task_types], jnp.float32)

  tx = own_optimizer(optimizer, lr)

  def init_fn(num_tasks: int):
    coefficients(num_tasks)  # Validates the length early.
    s = jnp.full((num_tasks,), init, jnp.float32)
    return {"log_var": s, "opt": tx.init(s)}

  def weigh(state, *, losses, step, key):
    del step, key
    losses = jax.lax.stop_gradient(_f32(losses))
    coef = coefficients(losses.shape[0])
    s = state["log_var"]

    def objective(s):
      return jnp.sum(coef * jnp.exp(-s) * losses + 0.5 * s)

    value, grad = jax.value_and_grad(objective)(s)
    new_s, new_opt = own_step(tx, s, grad, state["opt"])
    weights = coef * jnp.exp(-s)
    return Weighting(weights, {"log_var": new_s, "opt": new_opt},
                     {"uncertainty_objective": value})

  return _loss_strategy(
      "uncertainty", init_fn, weigh,
      {"task_types": None if task_types is None else list(task_types),
       "lr": lr, "optimizer": optimizer, "init": init}, mode)


# --------------------------------------------------------------------------
# Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019).
# --------------------------------------------------------------------------


@STRATEGIES.register("dwa")
def dwa(temperature: float = 2.0, period: Union[str, int] = "epoch",
        steps_per_epoch: Optional[int] = None,
        mode: Optional[str] = None) -> Strategy:
  """Dynamic Weight Average (Liu, Johns & Davison, CVPR 2019, MTAN).

  ``w_k = K softmax_k(r / T)`` with ``r_k = Lbar_k(n-1) / Lbar_k(n-2)``, the
  ratio of the task's average training loss over the last two completed
  periods.  Until two periods are complete all weights are 1.  ``T = 2`` is
  the paper's and LibMTL's default.

  Periods: ``period = "epoch"`` (the default) uses epochs, as the paper and
  LibMTL (``train_loss_buffer``: the epoch's mean loss per task; weights 1 in
  epochs 0 and 1).  An epoch is `steps_per_epoch` consecutive steps from step
  0; the train loop passes it (the training split's rows // batch size, the
  epochs of `mtrec_jax.data.pipeline`), and outside the loop it must be
  given.  An integer ``period = n`` uses periods of n steps instead
  (``period = 1``: the per-step variant, which `census-strategies` published
  as "dwa" before this default; `steps_per_epoch` is then ignored).  A
  period's average is the mean of its steps' losses, as LibMTL's (all
  batches have the same size: the epoch's remainder is dropped).

  Scale: sum-like (weights sum to K).

  Args:
    temperature: softmax temperature ``T``.
    period: "epoch", or a positive number of steps per averaging period.
    steps_per_epoch: steps in one epoch (needed for ``period="epoch"``).
    mode: accepted for interface uniformity; ignored (loss strategy).
  """
  if temperature <= 0:
    raise ValueError(f"strategy 'dwa': temperature must be > 0, got "
                     f"{temperature}")
  if period == "epoch":
    if steps_per_epoch is None:
      raise ValueError(
          "strategy 'dwa': period='epoch' (the default: DWA averages the "
          "losses per epoch) needs steps_per_epoch, which the train loop "
          "passes; outside it give steps_per_epoch=<steps in one epoch>, or "
          "period=<steps> (period=1: the per-step variant)")
    window, what = steps_per_epoch, "steps_per_epoch"
  else:
    window, what = period, "period ('epoch' or a number of steps)"
  if (isinstance(window, bool) or not isinstance(window, (int, float))
      or int(window) != window or window < 1):
    raise ValueError(f"strategy 'dwa': {what} must be a positive integer, "
                     f"got {window!r}")
  window = int(window)

  def init_fn(num_tasks: int):
    zeros = jnp.zeros((num_tasks,), jnp.float32)
    return {"sum": zeros, "count": jnp.zeros((), jnp.int32),
            "prev1": jnp.ones((num_tasks,), jnp.float32),
            "prev2": jnp.ones((num_tasks,), jnp.float32),
            "periods": jnp.zeros((), jnp.int32)}

  def weigh(state, *, losses, step, key):
    del step, key
    losses = jax.lax.stop_gradient(_f32(losses))
    k = losses.shape[0]
    ratio = state["prev1"] / jnp.where(state["prev2"] > 0, state["prev2"], 1.0)
    ready = state["periods"] >= 2
    w = jnp.where(ready, k * jax.nn.softmax(ratio / temperature),
                  jnp.ones((k,), losses.dtype))
    # Accumulate this step's losses into the current period.
    total = state["sum"] + losses
    count = state["count"] + 1
    done = count >= window
    avg = total / window
    new_state = {
        "sum": jnp.where(done, jnp.zeros_like(total), total),
        "count": jnp.where(done, 0, count).astype(jnp.int32),
        "prev1": jnp.where(done, avg, state["prev1"]),
        "prev2": jnp.where(done, state["prev1"], state["prev2"]),
        "periods": (state["periods"] + done.astype(jnp.int32)),
    }
    return Weighting(w, new_state, {})

  return _loss_strategy("dwa", init_fn, weigh,
                        {"temperature": temperature, "period": period,
                         "steps_per_epoch": steps_per_epoch}, mode)


# --------------------------------------------------------------------------
# Random Loss Weighting (Lin et al., TMLR 2022).
# --------------------------------------------------------------------------


@STRATEGIES.register("rlw")
def rlw(mode: Optional[str] = None) -> Strategy:
  """Random Loss Weighting (Lin et al., TMLR 2022, "Reasonable
  Effectiveness of Random Weighting").

  Every step draws ``z ~ N(0, I_K)`` from the step's `key` and uses
  ``w = softmax(z)``, the paper's default (normal) distribution, as in
  LibMTL's ``RLW(dist='Normal')``.  The weights lie on the simplex, so the
  scale is mean-like (LibMTL also applies them unscaled).  The same key gives
  the same weights; a caller that passes no key gets ``PRNGKey(0)``, i.e.
  the same weights at every step, so pass a per-step key.

  Args:
    mode: accepted for interface uniformity; ignored (loss strategy).
  """

  def weigh(state, *, losses, step, key):
    del step
    if key is None:
      key = jax.random.PRNGKey(0)
    k = jnp.shape(losses)[0]
    z = jax.random.normal(key, (k,), jnp.float32)
    return Weighting(jax.nn.softmax(z), state, {})

  return _loss_strategy("rlw", _stateless, weigh, {}, mode)


# --------------------------------------------------------------------------
# Geometric Loss Strategy (Chennupati et al., CVPR-W 2019).
# --------------------------------------------------------------------------


@STRATEGIES.register("gls")
def gls(eps: float = 1e-12, mode: Optional[str] = None) -> Strategy:
  """Geometric Loss Strategy (Chennupati et al., CVPR Workshops 2019,
  MultiNet++).

  The objective is the geometric mean ``Lg = (prod_k L_k)^(1/K)``.  As
  weights, ``w_k = Lg / (K L_k)`` (held constant), whose weighted sum
  ``sum_k w_k grad L_k`` is exactly ``grad Lg``.  The product is computed as
  ``exp(mean(log L))`` for stability; losses are clipped below at `eps`
  (GLS needs positive losses).  No hyper-parameters in the paper or LibMTL.

  Scale: mean-like (``sum_k w_k L_k = Lg``, and with equal losses the
  weights are 1/K).

  Args:
    eps: lower clip of the losses.
    mode: accepted for interface uniformity; ignored (loss strategy).
  """

  def weigh(state, *, losses, step, key):
    del step, key
    losses = jnp.maximum(jax.lax.stop_gradient(_f32(losses)), eps)
    k = losses.shape[0]
    geo = jnp.exp(jnp.mean(jnp.log(losses)))
    return Weighting(geo / (k * losses), state, {"geometric_mean_loss": geo})

  return _loss_strategy("gls", _stateless, weigh, {"eps": eps}, mode)


# --------------------------------------------------------------------------
# FAMO (Liu, Liu, Jin, Stone & Liu, NeurIPS 2023).
# --------------------------------------------------------------------------


@STRATEGIES.register("famo")
def famo(lr: float = 0.025, gamma: float = 1e-3,
         min_losses: Optional[Sequence[float]] = None, eps: float = 1e-8,
         mode: Optional[str] = None) -> Strategy:
  """Fast Adaptive Multitask Optimization (Liu et al., NeurIPS 2023).

  Task logits ``xi`` (state, initialised at 0) give ``z = softmax(xi)``.  The
  network minimises ``sum_k z_k log(L_k - m_k) / c`` with
  ``c = sum_k z_k / (L_k - m_k)`` held constant, so the effective loss
  weights are ``w_k = (z_k / D_k) / sum_j (z_j / D_j)`` with
  ``D_k = L_k - m_k + eps`` (``m`` = `min_losses`, zero by default).  The
  logits are updated with the decrease of the log-losses,
  ``delta = log D(prev) - log D(now)``: the gradient ``J_softmax(xi)^T delta
  + gamma xi`` goes through ``optax.adam`` (PyTorch's defaults) with rate
  `lr`, the ``gamma xi`` term added by ``optax.add_decayed_weights(gamma)``
  before it, as the official ``torch.optim.Adam(weight_decay=gamma)``.

  Timing: the official code recomputes the losses on the same batch after the
  parameter update (one extra forward pass).  Here the update at step t uses
  the losses of steps t-1 (kept in the state) and t, on consecutive batches;
  the update happens at the start of ``weigh`` and the first step does no
  update.  The weights returned use the updated logits and this step's
  losses.

  Defaults: ``lr = 0.025`` (official and LibMTL), ``gamma = 1e-3``: LibMTL's
  default (``FAMO_w_gamma``) and the value of three of the official run
  scripts (``experiments/{celeba,nyuv2,quantum_chemistry}/run.sh``); the
  official Cityscapes and Meta-World scripts use 1e-2, the toy 0, and the
  official class defaults differ (``FAMO(gamma=1e-5)`` in
  ``methods/weight_methods.py``, 1e-2 in the stand-alone ``famo.py`` and the
  experiments' ``--gamma`` flag), so no class default is "the paper's".  The
  official code also clips the shared gradient norm at 1; add
  ``optax.clip_by_global_norm(1.0)`` to the chain to match.

  Scale: mean-like (the weights sum to 1).

  Args:
    lr: learning rate of the logits.
    gamma: L2 regularisation (Adam weight decay) of the logits.
    min_losses: per-task lower bounds ``m`` of the losses (default zeros).
    eps: added to ``L - m`` before division and logarithm, as the original.
    mode: accepted for interface uniformity; ignored (loss strategy).
  """

  def lower(k: int) -> jax.Array:
    if min_losses is None:
      return jnp.zeros((k,), jnp.float32)
    if len(min_losses) != k:
      raise ValueError(f"strategy 'famo': {len(min_losses)} min_losses given "
                       f"for {k} tasks; give one per task")
    return jnp.asarray(min_losses, jnp.float32)

  tx = own_optimizer("adam", lr, weight_decay=gamma)

  def init_fn(num_tasks: int):
    lower(num_tasks)
    xi = jnp.zeros((num_tasks,), jnp.float32)
    return {"logits": xi, "opt": tx.init(xi),
            "prev_losses": jnp.ones((num_tasks,), jnp.float32),
            "has_prev": jnp.zeros((), jnp.int32)}

  def weigh(state, *, losses, step, key):
    del step, key
    losses = jax.lax.stop_gradient(_f32(losses))
    m = lower(losses.shape[0])
    log_now = jnp.log(jnp.maximum(losses - m, 0.0) + eps)
    log_prev = jnp.log(jnp.maximum(state["prev_losses"] - m, 0.0) + eps)
    delta = log_prev - log_now
    xi = state["logits"]
    _, softmax_vjp = jax.vjp(jax.nn.softmax, xi)
    grad = softmax_vjp(delta.astype(xi.dtype))[0]
    new_xi, new_opt = own_step(tx, xi, grad, state["opt"])
    update = state["has_prev"] > 0
    xi = jnp.where(update, new_xi, xi)
    opt = jax.tree_util.tree_map(lambda a, b: jnp.where(update, a, b), new_opt,
                                 state["opt"])
    z = jax.nn.softmax(xi)
    zd = z / (jnp.maximum(losses - m, 0.0) + eps)
    w = zd / jnp.sum(zd)
    new_state = {"logits": xi, "opt": opt, "prev_losses": losses,
                 "has_prev": jnp.ones((), jnp.int32)}
    return Weighting(w, new_state, {})

  return _loss_strategy(
      "famo", init_fn, weigh,
      {"lr": lr, "gamma": gamma, "eps": eps,
       "min_losses": None if min_losses is None else list(min_losses)}, mode)
