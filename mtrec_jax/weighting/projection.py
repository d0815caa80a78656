"""Gradient-surgery strategies: `pcgrad`, `gradvac` and `graddrop`.

PCGrad and GradVac edit each task gradient by adding multiples of the other
(original) task gradients, so every edited gradient stays a linear
combination ``g_i' = sum_k C[i, k] g_k`` of the rows of the Jacobian.  Both
are therefore "gramian" strategies: they track the coefficient matrix ``C``,
whose inner products follow from the Gramian alone
(``g_i' . g_j = (C G)[i, j]``, ``||g_i'||^2 = (C G C^T)[i, i]``), and report
``w = sum_i C[i, :]``, so the update ``sum_i g_i' = sum_k w_k g_k``.

Task order.  Both visit the other tasks in a random order per task, drawn
from the step's key (row i of ``argsort(uniform(key, (K, K)))`` for task
``i``, i.e. independent uniform permutations).  A key of None, or
``random_order=False``, gives the fixed order ``0..K-1``; `apply_strategy`
passes a missing key through as None, so ``aggregate(name, J)`` without a key
uses the fixed order.  Pass a fresh key per step in training.

GradDrop's update is not linear in the Jacobian (sign masks), so it is a
"jacobian" strategy.
"""
from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Union

import jax
import jax.numpy as jnp

from mtrec_jax.registry import STRATEGIES
from mtrec_jax.weighting.base import Strategy, Weighting
from mtrec_jax.weighting.loss_weighting import resolve_mode


def _float(x: jax.Array) -> jax.Array:
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def task_orders(k: int, key: Optional[jax.Array]) -> jax.Array:
  """[K, K] visiting orders: row i is the order in which task i meets the
  others (it contains i itself, which the strategies skip).  Fixed order
  ``0..K-1`` for every row when `key` is None."""
  if key is None:
    return jnp.tile(jnp.arange(k), (k, 1))
  # Independent uniform permutations: argsort of i.i.d. uniforms per row.
  return jnp.argsort(jax.random.uniform(key, (k, k)), axis=1)


# --------------------------------------------------------------------------
# PCGrad (Yu et al., NeurIPS 2020).
# --------------------------------------------------------------------------


@jax.jit
def pcgrad_coefficients(gram: jax.Array, orders: jax.Array) -> jax.Array:
  """[K, K] coefficients ``C`` with ``g_i^PC = sum_k C[i, k] g_k``.

  For each task i, starting from ``g_i``, for each other task j in
  ``orders[i]``: if ``g_i^PC . g_j < 0``, remove the component along ``g_j``:
  ``g_i^PC -= (g_i^PC . g_j / ||g_j||^2) g_j``.  Tasks with a zero gradient
  are never projected against.
  """
  gram = _float(gram)
  k = gram.shape[0]
  eye = jnp.eye(k, dtype=gram.dtype)
  sq_norms = jnp.diag(gram)

  def row(i, order):
    def visit(c, j):
      dot = c @ gram[:, j]
      conflict = (j != i) & (dot < 0) & (sq_norms[j] > 0)
      coef = jnp.where(conflict, dot / jnp.where(conflict, sq_norms[j], 1.0),
                       0.0)
      return c - coef * eye[j], None

    c, _ = jax.lax.scan(visit, eye[i], order)
    return c

  return jax.vmap(row)(jnp.arange(k), orders)


@STRATEGIES.register("pcgrad")
def pcgrad(random_order: bool = True, mode: Optional[str] = None) -> Strategy:
  """PCGrad, projecting conflicting gradients (Yu et al., NeurIPS 2020).

  For each task, its gradient is projected onto the normal plane of every
  other task's (original) gradient it conflicts with (negative inner
  product), visiting the others in a random order; the update is the sum of
  the projected gradients, as in the paper and LibMTL.  Computed from the
  Gramian through the coefficient matrix (module docstring).  No
  hyper-parameters in the paper; LibMTL draws a fresh random order per task
  and step, which is ``random_order=True`` with a per-step key here.

  Scale: sum-like (orthogonal or agreeing gradients get weight 1 each).
  Default mode "params" (LibMTL supports PCGrad on parameter gradients only).

  Args:
    random_order: visit the other tasks in a random order drawn from the
      step's key; False (or a key of None) uses the order 0..K-1.
    mode: "params" or "rep"; overrides the default mode.
  """
  name = "pcgrad"

  def weigh(state, *, gramian, losses, step, key):
    del losses, step
    gram = jax.lax.stop_gradient(gramian)
    k = gram.shape[0]
    orders = task_orders(k, key if random_order else None)
    coefs = pcgrad_coefficients(gram, orders)
    return Weighting(jnp.sum(coefs, axis=0), state, {})

  return Strategy(name=name, kind="gramian", init=lambda k: (), weigh=weigh,
                  default_mode=resolve_mode(name, mode, "params"),
                  hparams={"random_order": random_order, "mode": mode})


# --------------------------------------------------------------------------
# GradVac (Wang, Tsvetkov, Firat & Cao, ICLR 2021).
# --------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("beta", "eps",
                                             "ema_on_conflict_only"))
def gradvac_coefficients(gram: jax.Array, orders: jax.Array,
                         targets: jax.Array, *, beta: float, eps: float = 1e-8,
                         ema_on_conflict_only: bool = False
                         ) -> tuple[jax.Array, jax.Array]:
  """One GradVac step on the Gramian.

  Returns ``(C, new_targets)`` with ``g_i^GV = sum_k C[i, k] g_k``.  For each
  task i, for each other task j in ``orders[i]``: ``phi = cos(g_i^GV, g_j)``;
  if ``phi < targets[i, j]`` add
  ``||g_i^GV|| (t sqrt(1 - phi^2) - phi sqrt(1 - t^2)) / (||g_j|| sqrt(1 - t^2))
  * g_j`` (``t`` the target), which raises the cosine to ``t``; then the
  target becomes ``(1 - beta) t + beta phi`` (every visit, as the paper's
  Algorithm 1; only on a correction with `ema_on_conflict_only`, as
  LibMTL).
  """
  gram = _float(gram)
  targets = targets.astype(gram.dtype)
  k = gram.shape[0]
  eye = jnp.eye(k, dtype=gram.dtype)
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))

  def row(i, order, target_row):
    def visit(carry, j):
      c, t_row = carry
      cg = c @ gram
      norm_i = jnp.sqrt(jnp.maximum(cg @ c, 0.0))
      norm_j = norms[j]
      phi = cg[j] / (norm_i * norm_j + eps)
      t = t_row[j]
      correct = (j != i) & (phi < t) & (norm_i > 0) & (norm_j > 0)
      sqrt_phi = jnp.sqrt(jnp.maximum(1.0 - phi * phi, 0.0))
      sqrt_t = jnp.sqrt(jnp.maximum(1.0 - t * t, 0.0))
      w = norm_i * (t * sqrt_phi - phi * sqrt_t) / (norm_j * sqrt_t + eps)
      c = c + jnp.where(correct, w, 0.0) * eye[j]
      update = (j != i) & (correct if ema_on_conflict_only else True)
      t_row = t_row.at[j].set(jnp.where(update, (1.0 - beta) * t + beta * phi,
                                        t))
      return (c, t_row), None

    (c, t_row), _ = jax.lax.scan(visit, (eye[i], target_row), order)
    return c, t_row

  return jax.vmap(row)(jnp.arange(k), orders, targets)


@STRATEGIES.register("gradvac")
def gradvac(beta: float = 0.5, eps: float = 1e-8, random_order: bool = True,
            ema_on_conflict_only: bool = False,
            mode: Optional[str] = None) -> Strategy:
  """GradVac, Gradient Vaccine (Wang et al., ICLR 2021).

  Like PCGrad, but instead of projecting only conflicting gradients it
  raises the cosine similarity of every pair (i, j) to an adaptive target
  ``phi_hat_ij``, an EMA of the observed similarities kept in the strategy
  state (K x K, initialised at 0, so the first step equals PCGrad).  The
  update is the sum of the edited gradients.

  Defaults: ``beta = 0.5`` and ``eps = 1e-8`` (LibMTL's and TorchJD's
  defaults); the EMA is updated at every visit of a pair, as the paper's
  Algorithm 1 and TorchJD (LibMTL only updates it when a correction is made:
  ``ema_on_conflict_only=True``).  Granularity: one target per task pair for
  the whole gradient (LibMTL's default ``group_type=0``, "whole model"); the
  paper's per-layer targets are not implemented.  Random visiting order as
  `pcgrad`.

  Scale: sum-like (agreeing gradients get weight 1 each).
  Default mode "params" (LibMTL supports GradVac on parameter gradients only).

  Args:
    beta: EMA rate of the targets.
    eps: added to the denominators.
    random_order: as `pcgrad`.
    ema_on_conflict_only: LibMTL's EMA update rule.
    mode: "params" or "rep"; overrides the default mode.
  """
  name = "gradvac"
  if not 0.0 <= beta <= 1.0:
    raise ValueError(f"strategy {name!r}: beta must be in [0, 1], got {beta}")

  def init(num_tasks: int):
    return {"targets": jnp.zeros((num_tasks, num_tasks), jnp.float32)}

  def weigh(state, *, gramian, losses, step, key):
    del losses, step
    gram = jax.lax.stop_gradient(gramian)
    k = gram.shape[0]
    orders = task_orders(k, key if random_order else None)
    coefs, targets = gradvac_coefficients(
        gram, orders, state["targets"], beta=beta, eps=eps,
        ema_on_conflict_only=ema_on_conflict_only)
    new_state = {"targets": targets.astype(state["targets"].dtype)}
    return Weighting(jnp.sum(coefs, axis=0), new_state, {})

  return Strategy(name=name, kind="gramian", init=init, weigh=weigh,
                  default_mode=resolve_mode(name, mode, "params"),
                  hparams={"beta": beta, "eps": eps,
                           "random_order": random_order,
                           "ema_on_conflict_only": ema_on_conflict_only,
                           "mode": mode})


# --------------------------------------------------------------------------
# GradDrop (Chen et al., NeurIPS 2020).
# --------------------------------------------------------------------------


@jax.jit
def graddrop_combine(jacobian: jax.Array, noise: jax.Array,
                     leak: Union[float, jax.Array] = 0.0,
                     with_kept: Union[bool, jax.Array] = True
                     ) -> tuple[jax.Array, jax.Array]:
  """GradDrop's masked sum for a [K, P] Jacobian and uniform noise [P].

  Sign purity ``P = (1 + sum_k g_k / sum_k |g_k|) / 2`` per coordinate (1/2
  where every gradient is zero); task k keeps its positive entries where
  ``P > U`` and its negative entries where ``P < U``; the update is
  ``sum_k (l_k + (1 - l_k) M_k) * g_k`` with leak ``l``.  Returns
  ``(update [P], kept [K])`` where ``kept_k = sum_p m_kp g_kp^2 /
  sum_p g_kp^2`` is the fraction of task k's squared norm that survived
  (1 for a zero row).  `with_kept` (a bool or a traced bool) computes the
  fractions; when False they are NaN and skipped at run time: their K
  reductions cost several times more than the update itself on XLA:CPU.

  Written as K unrolled element-wise rows so XLA fuses the whole mask into
  one pass over P and never materialises the [K, P] multipliers, markedly
  faster than the batched form on CPU (a short leading axis reduced by
  XLA:CPU is slow; GradDrop's step time:
  `benchmarks/results/strategies_cpu_k4.md`, rows graddrop).
  """
  j = _float(jacobian)
  rows = [j[i] for i in range(j.shape[0])]
  total = functools.reduce(jnp.add, rows)
  mass = functools.reduce(jnp.add, [jnp.abs(r) for r in rows])
  purity = 0.5 * (1.0 + jnp.where(mass > 0, total / jnp.where(mass > 0, mass,
                                                                1.0), 0.0))
  up, down = purity > noise, purity < noise
  leak = jnp.broadcast_to(jnp.asarray(leak, j.dtype), (len(rows),))
  masked = [jnp.where((up & (r > 0)) | (down & (r < 0)), r, leak[i] * r)
            for i, r in enumerate(rows)]

  def kept_fractions():
    kept_sq = jnp.stack([jnp.vdot(m, r) for m, r in zip(masked, rows)])
    sq = jnp.stack([jnp.vdot(r, r) for r in rows])
    return jnp.where(sq > 0, kept_sq / jnp.where(sq > 0, sq, 1.0), 1.0)

  kept = jax.lax.cond(jnp.asarray(with_kept), kept_fractions,
                      lambda: jnp.full((len(rows),), jnp.nan, j.dtype))
  return functools.reduce(jnp.add, masked), kept


def uniform_16bit(key: jax.Array, size: int) -> jax.Array:
  """``size`` uniforms on (0, 1) at 16-bit resolution, ``(b + 1/2) / 2^16``,
  two from each 32-bit draw: half the random bits of
  `jax.random.uniform`, whose threefry draw was GradDrop's largest cost on
  CPU.  A comparison
  ``P > U`` is then off by at most 2^-16 in probability."""
  bits = jax.random.bits(key, ((size + 1) // 2,), jnp.uint32)
  halves = jnp.concatenate([bits & 0xFFFF, bits >> 16])[:size]
  return (halves.astype(jnp.float32) + 0.5) * (1.0 / 65536.0)


@functools.partial(jax.jit, static_argnames=("with_kept",))
def graddrop_rep_combine(rep_grads: jax.Array, rep: jax.Array,
                         noise: jax.Array,
                         leak: Union[float, jax.Array] = 0.0,
                         with_kept: bool = True
                         ) -> tuple[jax.Array, jax.Array]:
  """GradDrop on representation gradients with the batch-reduced purity.

  rep_grads, rep: ``[K, B, *F]``, task k's gradient w.r.t. its representation
  slot and the slot's activations; noise: ``[*F]``, one uniform per feature.
  Per task and feature, ``G_kf = sum_b sign(A_kbf) dL_k/dA_kbf`` (the batch
  is reduced first, so the sign choice is one per feature, shared by the
  batch); ``P_f = (1 + sum_k G_kf / sum_k |G_kf|) / 2`` (1/2 where every G is
  zero); task k keeps its whole feature-f gradient where ``P_f > U_f`` and
  ``G_kf > 0`` or ``P_f < U_f`` and ``G_kf < 0``, else keeps the leak share
  ``l_k``.  Returns ``(cotangents [K, B, *F], kept [K])``: slot k's masked
  gradient (summed by the representation's VJP where the slots share one
  representation) and each task's kept fraction ``sum m g^2 / sum g^2``
  with m its multiplier, as `graddrop_combine` (NaN when `with_kept` is
  False).
  """
  g = _float(rep_grads)
  k = g.shape[0]
  signed = jnp.sum(jnp.sign(rep).astype(g.dtype) * g, axis=1)  # [K, *F]
  rows = [signed[i] for i in range(k)]
  total = functools.reduce(jnp.add, rows)
  mass = functools.reduce(jnp.add, [jnp.abs(r) for r in rows])
  purity = 0.5 * (1.0 + jnp.where(mass > 0, total / jnp.where(mass > 0, mass,
                                                                1.0), 0.0))
  up, down = purity > noise, purity < noise
  leak = jnp.broadcast_to(jnp.asarray(leak, g.dtype), (k,))
  scale = jnp.stack([jnp.where((up & (r > 0)) | (down & (r < 0)), 1.0,
                               leak[i]) for i, r in enumerate(rows)])
  cot = g * scale[:, None]
  if with_kept:
    sq = jnp.sum(jnp.square(g).reshape(k, -1), axis=1)
    kept_sq = jnp.sum((scale[:, None] * jnp.square(g)).reshape(k, -1),
                      axis=1)
    kept = jnp.where(sq > 0, kept_sq / jnp.where(sq > 0, sq, 1.0), 1.0)
  else:
    kept = jnp.full((k,), jnp.nan, g.dtype)
  return cot, kept


@STRATEGIES.register("graddrop")
def graddrop(leak: Union[float, Sequence[float]] = 0.0,
             mode: Optional[str] = None, report_every: int = 10) -> Strategy:
  """GradDrop, gradient sign dropout (Chen et al., NeurIPS 2020).

  Per coordinate of the gradient, computes the sign purity
  ``P = (1 + sum g / sum |g|) / 2`` over tasks, draws ``U ~ Uniform(0, 1)``
  from the step's key, keeps the positive task gradients where ``P > U`` and
  the negative ones where ``P < U``, and sums the masked gradients (see
  `graddrop_combine`).  Where all tasks agree in sign, everything is kept.
  U has 16-bit resolution (`uniform_16bit`).

  Defaults: ``leak = 0`` (paper and LibMTL); a sequence gives one leak per
  task (the paper's per-task ``l_i``).  Default mode "rep" as in the paper
  and LibMTL (which only supports representation gradients): GradDrop acts
  on the gradients w.r.t. the shared representation.  There, the purity is
  batch-reduced as in LibMTL's reference code (`graddrop_rep_combine`):
  each task's gradient is multiplied by the sign of its representation
  slot's activations and summed over the batch, so one purity, one U and one
  keep/drop decision per task serve each feature for the whole batch.  (The
  paper's Algorithm 1 for batch-separated layers weights the batch sum by the
  activations themselves rather than their signs.)  In "params" mode, and in
  the pure `aggregate` API on a [K, P] Jacobian, the purity and U are per
  coordinate (`graddrop_combine`).  The ``1e-7`` that LibMTL adds to
  ``sum |g|`` is replaced by an exact zero guard, so agreeing signs always
  give ``P`` exactly 0 or 1.

  Reported weights (logging only; the update is not linear): for each task,
  the fraction of its squared gradient norm that was kept,
  ``sum_p m_kp g_kp^2 / sum_p g_kp^2`` (1 when nothing was dropped),
  computed exactly at steps that are multiples of `report_every` and held
  in the strategy state in between (the training loop logs every 50 steps,
  a multiple of the default 10), since those K reductions cost XLA:CPU more
  than the masked update itself.
  Scale: sum-like (agreeing gradients are summed).

  Args:
    leak: leak ``l`` in [0, 1], scalar or one per task.
    mode: "params" or "rep"; overrides the default mode.
    report_every: steps between exact kept fractions (1 = every step).
  """
  name = "graddrop"
  leak_value = tuple(float(x) for x in leak) if isinstance(
      leak, (list, tuple)) else float(leak)
  if isinstance(report_every, bool) or not isinstance(report_every, int) \
      or report_every < 1:
    raise ValueError(f"strategy {name!r}: report_every must be an int >= 1, "
                     f"got {report_every!r}")

  def check_leaks(k: int) -> None:
    if isinstance(leak_value, tuple) and len(leak_value) != k:
      raise ValueError(f"strategy {name!r}: {len(leak_value)} leaks given for "
                       f"{k} tasks; give one per task")

  def aggregate(state, *, jacobian, losses, step, key):
    del losses
    if key is None:
      key = jax.random.PRNGKey(0)
    step = jnp.zeros((), jnp.int32) if step is None else jnp.asarray(step)
    j = jax.lax.stop_gradient(jacobian)
    check_leaks(j.shape[0])
    noise = uniform_16bit(key, j.shape[1])
    due = step % report_every == 0
    update, kept = graddrop_combine(j, noise, jnp.asarray(leak_value), due)
    kept = jnp.where(due, kept, state).astype(state.dtype)
    return update.astype(jacobian.dtype), Weighting(kept, kept, {})

  def aggregate_rep(state, *, rep_grads, rep, losses, step, key):
    del losses
    if key is None:
      key = jax.random.PRNGKey(0)
    step = jnp.zeros((), jnp.int32) if step is None else jnp.asarray(step)
    check_leaks(rep_grads.shape[0])
    features = rep_grads.shape[2:]
    noise = uniform_16bit(key, math.prod(features)).reshape(features)
    due = step % report_every == 0
    g, a = jax.lax.stop_gradient(rep_grads), jax.lax.stop_gradient(rep)
    leak = jnp.asarray(leak_value)
    # Two branches rather than a traced flag: the K squared-norm reductions
    # run only on report steps.
    cot, kept = jax.lax.cond(
        due, lambda: graddrop_rep_combine(g, a, noise, leak, with_kept=True),
        lambda: (graddrop_rep_combine(g, a, noise, leak, with_kept=False)[0],
                 state.astype(_float(g).dtype)))
    kept = kept.astype(state.dtype)
    return cot.astype(rep_grads.dtype), Weighting(kept, kept, {})

  return Strategy(name=name, kind="jacobian",
                  init=lambda k: jnp.ones((k,), jnp.float32),
                  aggregate=aggregate, aggregate_rep=aggregate_rep,
                  default_mode=resolve_mode(name, mode, "rep"),
                  hparams={"leak": list(leak_value) if isinstance(
                      leak_value, tuple) else leak_value, "mode": mode,
                           "report_every": report_every})
