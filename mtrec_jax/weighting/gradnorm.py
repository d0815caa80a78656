"""GradNorm (Chen, Badrinarayanan, Lee & Rabinovich, ICML 2018): `gradnorm`."""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from mtrec_jax.registry import STRATEGIES
from mtrec_jax.weighting.base import Strategy, Weighting
from mtrec_jax.weighting.loss_weighting import (check_optimizer,
                                                own_optimizer, own_step,
                                                resolve_mode)


@STRATEGIES.register("gradnorm")
def gradnorm(alpha: float = 1.5, lr: float = 0.025, optimizer: str = "adam",
             min_weight: float = 1e-4, mode: Optional[str] = None
             ) -> Strategy:
  """GradNorm, gradient normalisation for adaptive loss balancing (Chen et
  al., ICML 2018).

  Learnable task weights ``w`` (state, initialised at 1) are trained inside
  ``weigh`` so that each task's weighted gradient norm ``G_k = w_k ||g_k||``
  tracks ``Gbar * r_k^alpha``, where ``Gbar = mean_k G_k``, ``r_k`` is the
  task's inverse training rate ``(L_k / L_k(0)) / mean_j (L_j / L_j(0))`` and
  the target is held constant.  One step of the weights' own optimiser on the
  L1 loss ``sum_k |G_k - target_k|``, then the weights are clipped below at
  `min_weight` and renormalised to sum to K (as the paper).  The weights
  applied at a step are those *before* its update (the paper updates ``w``
  after the network's backward pass).  ``L_k(0)`` is recorded on the first
  call (LibMTL instead uses the first epoch's average loss and trains with
  equal weights during that epoch).

  ``||g_k|| = sqrt(G_kk)`` from the Gramian: in the default mode "rep", the
  gradients w.r.t. the shared representation (the output of the last shared
  layer); the paper uses the gradients w.r.t. the last shared layer's
  *weights*, which is "params" mode restricted to that layer.  In "params"
  mode the norms are over all shared parameters.  Which rep-mode Gramian is
  the train step's `rep_gramian` (`make_train_step`): "rows" (the default)
  takes the norm of each task's whole [B, H] representation gradient;
  LibMTL's ``rep_grad=True`` sums it over the batch first ("batch_sum"),
  which can change the order of the norms (per-example gradients that cancel
  over the batch count in "rows" only).
  Task-specific parameters are weighted too (``weight_task_params=True``),
  because GradNorm weights the losses.

  Defaults: ``alpha = 1.5`` (LibMTL's default; the paper tunes alpha per
  dataset).  The paper and LibMTL train ``w`` with the network's optimiser;
  here the weights have their own, Adam (PyTorch defaults) with
  ``lr = 0.025`` (a project choice, the rate FAMO's reference code uses for
  its task logits) -- Adam because the gradient of the L1 loss w.r.t.
  ``w_k`` is ``+-||g_k||``, whose scale varies by orders of magnitude between
  models, and Adam's steps do not depend on it.

  Scale: sum-like (weights sum to K).

  Args:
    alpha: asymmetry (restoring force) hyper-parameter.
    lr: learning rate of the weights.
    optimizer: "adam" or "sgd".
    min_weight: lower clip of the weights before renormalisation.
    mode: "params" or "rep"; overrides the default mode.
  """
  name = "gradnorm"
  check_optimizer(name, optimizer)
  tx = own_optimizer(optimizer, lr)

  def init(num_tasks: int):
    w = jnp.ones((num_tasks,), jnp.float32)
    return {"weights": w, "initial_losses": jnp.ones((num_tasks,), jnp.float32),
            "initialized": jnp.zeros((), jnp.int32),
            "opt": tx.init(w)}

  def weigh(state, *, gramian, losses, step, key):
    del step, key
    gram = jax.lax.stop_gradient(gramian)
    losses = jax.lax.stop_gradient(jnp.asarray(losses, jnp.float32))
    k = losses.shape[0]
    first = state["initialized"] == 0
    initial = jnp.where(first, losses, state["initial_losses"])
    tiny = jnp.finfo(jnp.float32).tiny
    rate = losses / jnp.maximum(initial, tiny)
    inverse_rate = rate / jnp.maximum(jnp.mean(rate), tiny)
    norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0)).astype(jnp.float32)
    w = state["weights"]
    target = jax.lax.stop_gradient(jnp.mean(w * norms) * inverse_rate ** alpha)

    def l1(w):
      return jnp.sum(jnp.abs(w * norms - target))

    value, grad = jax.value_and_grad(l1)(w)
    new_w, new_opt = own_step(tx, w, grad, state["opt"])
    new_w = jnp.maximum(new_w, min_weight)
    new_w = new_w * (k / jnp.sum(new_w))
    new_state = {"weights": new_w, "initial_losses": initial,
                 "initialized": jnp.ones((), jnp.int32), "opt": new_opt}
    return Weighting(w, new_state, {"gradnorm_loss": value})

  return Strategy(name=name, kind="gramian", init=init, weigh=weigh,
                  default_mode=resolve_mode(name, mode, "rep"),
                  weight_task_params=True,
                  hparams={"alpha": alpha, "lr": lr, "optimizer": optimizer,
                           "min_weight": min_weight, "mode": mode})
