"""CR-MOGM: an exponential moving average of any strategy's weights.

Shiji Zhou et al., "On the Convergence of Stochastic
Multi-Objective Gradient Manipulation and Beyond", NeurIPS 2022.  Stochastic
multi-objective gradient manipulation (MGDA, PCGrad, CAGrad, ...) is biased
because its weights are a non-linear function of one noisy batch; the paper
shows that averaging the weights over steps (correlation reduction),

  lambda_t = alpha lambda_{t-1} + (1 - alpha) lambda^_t,

restores convergence.  `cr_mogm` wraps any registered "gramian" or "loss"
strategy (``inner``) and applies its smoothed weights.
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import jax.numpy as jnp

from mtrec_jax.registry import STRATEGIES
from mtrec_jax.weighting.base import Strategy, Weighting
from mtrec_jax.weighting.loss_weighting import resolve_mode


@STRATEGIES.register("cr_mogm")
def cr_mogm(inner: str = "mgda", inner_hparams: Optional[dict] = None,
            alpha: float = 0.9,
            initial_weights: Optional[Sequence[float]] = None,
            mode: Optional[str] = None) -> Strategy:
  """CR-MOGM (Zhou et al., NeurIPS 2022) around the strategy ``inner``.

  ``lambda_t = alpha lambda_{t-1} + (1 - alpha) lambda^_t`` where
  ``lambda^_t`` are the inner strategy's weights at step t and
  ``lambda_0 = initial_weights``, or ``lambda^_1`` when not given (so the
  first step applies the inner weights unchanged, and ``aggregate``, which
  acts once from a fresh state, equals the inner strategy's).  The strategy
  takes the inner one's kind, default mode, ``weight_task_params`` and
  metrics (prefixed ``inner_``); the inner state lives under ``"inner"``.

  Defaults match torchjd 0.18 (``CRMOGMWeighting(weighting, alpha=0.9)``,
  which has no default inner weighting); ``inner = "mgda"``, the base method
  of the paper's analysis.  The paper's Corollary 1 lets ``alpha`` grow
  towards 1 as the learning rate decays (``alpha_t = 1 - lr_t / lr_0``);
  here ``alpha`` is fixed, as torchjd's default.  A "jacobian" inner
  strategy (e.g. GradDrop) is refused: its update is not linear in the
  weights, so there are no weights to smooth.

  Scale: the inner strategy's (the average of weights of one scale).

  Args:
    inner: name of the wrapped strategy ("gramian" or "loss" kind).
    inner_hparams: its hyper-parameters.
    alpha: EMA coefficient on the previous weights, in [0, 1] (0: no
      smoothing; 1: the weights stay at ``lambda_0``).
    initial_weights: ``lambda_0`` (one per task), or None.
    mode: 'params' or 'rep'; overrides the inner strategy's default mode.
  """
  name = "cr_mogm"
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"strategy {name!r}: alpha must be in [0, 1], got "
                     f"{alpha}")
  if inner == name:
    raise ValueError(f"strategy {name!r} cannot wrap itself")
  inner_hparams = dict(inner_hparams or {})
  # Imported here: the package imports this module while it loads.
  from mtrec_jax import weighting as _weighting
  inner_s = _weighting.build(inner, **inner_hparams)
  if inner_s.kind == "jacobian":
    raise ValueError(
        f"strategy {name!r}: inner strategy {inner!r} is of kind 'jacobian' "
        f"(its update is not a weighted sum of the gradients, so there are "
        f"no weights to smooth); wrap a 'gramian' or 'loss' strategy")
  init_w = (None if initial_weights is None
            else tuple(float(x) for x in initial_weights))

  def init(num_tasks: int):
    if init_w is not None and len(init_w) != num_tasks:
      raise ValueError(f"strategy {name!r}: {len(init_w)} initial weights "
                       f"given for {num_tasks} tasks; give one per task")
    lam = (jnp.zeros((num_tasks,), jnp.float32) if init_w is None
           else jnp.asarray(init_w, jnp.float32))
    return {"inner": inner_s.init(num_tasks), "lambda": lam,
            "started": jnp.asarray(init_w is not None, jnp.int32)}

  def smooth(state, out: Weighting) -> Weighting:
    hat = out.weights
    prev = jnp.where(state["started"] > 0,
                     state["lambda"].astype(hat.dtype), hat)
    lam = alpha * prev + (1.0 - alpha) * hat
    metrics = {f"inner_{key}": v for key, v in out.metrics.items()}
    new_state = {"inner": out.state,
                 "lambda": lam.astype(state["lambda"].dtype),
                 "started": jnp.ones_like(state["started"])}
    return Weighting(lam, new_state, metrics)

  def weigh_loss(state, *, losses, step, key):
    return smooth(state, inner_s.weigh(state["inner"], losses=losses,
                                       step=step, key=key))

  def weigh_gramian(state, *, gramian, losses, step, key):
    return smooth(state, inner_s.weigh(state["inner"], gramian=gramian,
                                       losses=losses, step=step, key=key))

  return Strategy(
      name=name, kind=inner_s.kind, init=init,
      weigh=weigh_loss if inner_s.kind == "loss" else weigh_gramian,
      default_mode=resolve_mode(name, mode, inner_s.default_mode),
      weight_task_params=inner_s.weight_task_params,
      hparams={"inner": inner, "inner_hparams": inner_hparams, "alpha": alpha,
               "initial_weights": None if init_w is None else list(init_w),
               "mode": mode})
