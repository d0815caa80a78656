"""LibMTL-style PyTorch train steps: the peer that `benchmarks.peers` times.

Why: the JAX step fuses the K per-task backward passes into one jitted
program; the usual PyTorch way (LibMTL's parameter-gradient mode) runs K
sequential ``loss_k.backward(retain_graph=True)`` calls, copies each task's
shared-parameter gradient into row k of a flat [K, P] matrix, combines the
rows on the host and writes the result back into ``.grad``.  This module is
that recipe, written from the papers (no LibMTL or torchjd code), for the
benchmark model of `benchmarks.strategies.setup`: a shared bottom MLP
(D -> 512 -> 512, ReLU after each layer), one tower per task (512 -> 64 ReLU
-> 1), mean squared error per task, Adam(1e-3).

Methods (the combination of the rows of J = [g_1; ...; g_K]):
* ``mean``: one backward pass of ``mean_k L_k`` (no per-task gradients).
* ``mgda``: Sener & Koltun (NeurIPS 2018), Algorithm 2: Frank-Wolfe on the
  simplex from the uniform point, each step's length by the closed-form
  line search of their Algorithm 1, on the Gramian ``J J^T``; at most 250
  iterations, stopping when a step moves the weights by < 1e-5.  No
  gradient normalisation (LibMTL's default, and ours).
* ``pcgrad``: Yu et al. (NeurIPS 2020): each task's gradient is projected
  onto the normal plane of every other task's gradient it conflicts with,
  visiting the others in a fresh random order; the update is the sum.
* ``gradnorm``: Chen et al. (ICML 2018), alpha = 1.5: ``G_k = w_k ||g_k^W||``
  with W the last shared layer's weight matrix, targets
  ``mean(G) r_k^alpha`` held constant, one Adam(lr 0.025) step of ``w`` on
  ``sum_k |G_k - target_k|`` (our JAX strategy's optimiser and rate), then
  ``w`` renormalised to sum to K; the step applies the weights from before
  the update, to the shared rows and to each tower's own gradient.
* ``cagrad``: Liu et al. (NeurIPS 2021), c = 0.5, rescale ``1 + c^2``: the
  dual ``min_{w in simplex} g_w . g_0 + c ||g_0|| ||g_w||`` solved on the
  Gramian with SciPy's SLSQP (as the paper's code), then
  ``d = (g_0 + c ||g_0|| g_w / ||g_w||) / (1 + c^2)``.

Both of LibMTL's gradient modes (`LibMTLStep`): "params" (the rows of J
are shared-parameter gradients) and "rep" (gradients w.r.t. the shared
representation, ``rep_grad=True``).  Towers keep their own task's
unweighted gradient (LibMTL's convention, as our JAX engine), except for
GradNorm, which weights the losses.

Requires torch (and scipy for CAGrad); `benchmarks.peers` imports this
module only after checking that torch is installed.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

METHODS = ("mean", "mgda", "pcgrad", "gradnorm", "cagrad")


class SharedBottomNet(nn.Module):
  """The benchmark model: shared bottom MLP, one MLP tower per task."""

  def __init__(self, input_dim: int, num_tasks: int,
               bottom: Sequence[int] = (512, 512), tower: int = 64):
    super().__init__()
    layers, width = [], input_dim
    for h in bottom:
      layers += [nn.Linear(width, h), nn.ReLU()]
      width = h
    self.bottom = nn.Sequential(*layers)
    self.towers = nn.ModuleList(
        nn.Sequential(nn.Linear(width, tower), nn.ReLU(), nn.Linear(tower, 1))
        for _ in range(num_tasks))

  def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
    rep = self.bottom(x)
    return [t(rep)[:, 0] for t in self.towers]

  def shared_parameters(self) -> list[nn.Parameter]:
    return list(self.bottom.parameters())

  def last_shared_weight(self) -> nn.Parameter:
    """The weight matrix of the last shared layer (GradNorm's W)."""
    return [m for m in self.bottom if isinstance(m, nn.Linear)][-1].weight


# ----------------------------------------------------------------------------
# Combinations of the per-task gradient rows.


def frank_wolfe_min_norm(gram: np.ndarray, max_iter: int = 250,
                         tol: float = 1e-5) -> np.ndarray:
  """The min-norm point of the convex hull of K vectors, given their Gramian
  (Sener & Koltun, Algorithms 1 and 2); returns the simplex weights."""
  k = gram.shape[0]
  w = np.full(k, 1.0 / k)
  for _ in range(max_iter):
    mw = gram @ w
    t = int(np.argmin(mw))
    vv, vt, tt = float(w @ mw), float(mw[t]), float(gram[t, t])
    # Algorithm 1 with theta = g_t and theta_bar = the current point v.
    if vt >= vv:
      gamma = 0.0  # no vertex lowers the norm: v is the min-norm point
    elif vt >= tt:
      gamma = 1.0
    else:
      gamma = (vv - vt) / (vv - 2.0 * vt + tt)
    new = (1.0 - gamma) * w
    new[t] += gamma
    moved = float(np.abs(new - w).sum())
    w = new
    if moved < tol:
      break
  return w


def pcgrad_update(jac: torch.Tensor,
                  orders: Optional[Sequence[Sequence[int]]] = None
                  ) -> torch.Tensor:
  """Sum of the PCGrad-projected rows of `jac` [K, P]; `orders[i]` is the
  order in which task i visits the others (default: random per task)."""
  k = jac.shape[0]
  sq_norms = (jac * jac).sum(dim=1)
  projected = jac.clone()
  for i in range(k):
    order = (torch.randperm(k).tolist() if orders is None
             else list(orders[i]))
    for j in order:
      if j == i or sq_norms[j] <= 0:
        continue
      dot = projected[i] @ jac[j]
      if dot < 0:
        projected[i] -= (dot / sq_norms[j]) * jac[j]
  return projected.sum(dim=0)


def cagrad_weights(gram: np.ndarray, c: float = 0.5,
                   rescale: float = 1.0) -> np.ndarray:
  """Per-row weights of the CAGrad update from the Gramian (float64):
  ``(1/K + lam w*) / rescale`` with ``lam = c ||g_0|| / ||g_w*||``."""
  from scipy.optimize import minimize  # pylint: disable=import-outside-toplevel
  k = gram.shape[0]
  uniform = np.full(k, 1.0 / k)
  g0_norm = float(np.sqrt(max(uniform @ gram @ uniform, 0.0)))
  radius = c * g0_norm
  g_dot_g0 = gram @ uniform  # row k: g_k . g_0

  def dual(w):
    return float(w @ g_dot_g0 + radius * np.sqrt(max(w @ gram @ w, 0.0)
                                                  + 1e-12))

  res = minimize(dual, uniform, method="SLSQP", bounds=[(0.0, 1.0)] * k,
                 constraints=({"type": "eq",
                               "fun": lambda w: 1.0 - np.sum(w)},))
  w = res.x
  gw_norm = float(np.sqrt(max(w @ gram @ w, 0.0)))
  lam = radius / (gw_norm + 1e-8)
  return (uniform + lam * w) / rescale


# ----------------------------------------------------------------------------
# The train step.


class LibMTLStep:
  """One train step ``step()`` of `method` on a fixed batch (held on the
  object: the benchmark times steps on one batch, as the JAX side).

  `mode` "params" (LibMTL's default): rows of J are the shared-parameter
  gradients from K backward passes through the shared bottom, and the
  combined vector is written into the shared ``.grad``.  "rep" (LibMTL's
  ``rep_grad=True``): each tower reads its own detached copy of the shared
  representation, the K backward passes stop there (rows: gradients w.r.t.
  the representation, [K, B * H]), and ONE backward pass through the bottom
  carries the combined row.
  """

  def __init__(self, method: str, x: np.ndarray, ys: Sequence[np.ndarray],
               *, mode: str = "params", lr: float = 1e-3, seed: int = 0,
               cagrad_c: float = 0.5, gradnorm_alpha: float = 1.5,
               gradnorm_lr: float = 0.025):
    if method not in METHODS:
      raise ValueError(f"method {method!r} is not one of {METHODS}")
    if mode not in ("params", "rep"):
      raise ValueError(f"mode {mode!r} is not 'params' or 'rep'")
    torch.manual_seed(seed)
    self.method, self.mode = method, mode
    self.k = len(ys)
    self.x = torch.tensor(np.asarray(x, np.float32))
    self.ys = [torch.tensor(np.asarray(y, np.float32)) for y in ys]
    self.model = SharedBottomNet(self.x.shape[1], self.k)
    self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
    self.shared = self.model.shared_parameters()
    sizes = [p.numel() for p in self.shared]
    self.offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    self.jac = torch.zeros(self.k, self.offsets[-1])
    last = self.model.last_shared_weight()
    at = next(i for i, p in enumerate(self.shared) if p is last)
    self.last_slice = slice(self.offsets[at], self.offsets[at + 1])
    self.c, self.alpha = cagrad_c, gradnorm_alpha
    self.gn_weights = torch.ones(self.k, requires_grad=True)
    self.gn_opt = torch.optim.Adam([self.gn_weights], lr=gradnorm_lr)
    self.initial_losses: Optional[torch.Tensor] = None
    self.last_weights: Optional[np.ndarray] = None

  def losses(self) -> list[torch.Tensor]:
    outs = self.model(self.x)
    return [torch.mean((o - y) ** 2) for o, y in zip(outs, self.ys)]

  def per_task_grads(self, losses: list[torch.Tensor]) -> torch.Tensor:
    """K sequential backward passes; row k of the [K, P] matrix is task k's
    shared gradient (the towers accumulate their own task's gradient)."""
    for k, loss in enumerate(losses):
      for p in self.shared:
        p.grad = None
      loss.backward(retain_graph=True)
      for i, p in enumerate(self.shared):
        self.jac[k, self.offsets[i]:self.offsets[i + 1]].copy_(
            p.grad.reshape(-1))
    return self.jac

  def per_task_rep_grads(self) -> tuple[list[torch.Tensor], torch.Tensor,
                                        torch.Tensor]:
    """(losses, rep, [K, B * H] rows): towers on detached copies of the
    representation, one backward pass per task down to its copy."""
    rep = self.model.bottom(self.x)
    copies = [rep.detach().clone().requires_grad_() for _ in range(self.k)]
    losses = [torch.mean((t(c)[:, 0] - y) ** 2)
              for t, c, y in zip(self.model.towers, copies, self.ys)]
    for loss in losses:
      loss.backward()
    rows = torch.stack([c.grad.reshape(-1) for c in copies])
    return losses, rep, rows

  def set_shared_grad(self, vec: torch.Tensor) -> None:
    for i, p in enumerate(self.shared):
      p.grad.copy_(vec[self.offsets[i]:self.offsets[i + 1]].view_as(p))

  def step(self) -> "LibMTLStep":
    self.opt.zero_grad(set_to_none=False)
    if self.method == "mean":
      torch.stack(self.losses()).mean().backward()
      self.opt.step()
      return self
    if self.mode == "params":
      losses = self.losses()
      rows = self.per_task_grads(losses)
    else:
      losses, rep, rows = self.per_task_rep_grads()
    combined, tower_weights = self.combine(rows, torch.stack(losses).detach())
    if self.mode == "params":
      self.set_shared_grad(combined)
    else:
      rep.backward(combined.view_as(rep))
    if tower_weights is not None:
      for k, tower in enumerate(self.model.towers):
        for p in tower.parameters():
          p.grad.mul_(tower_weights[k])
    self.opt.step()
    return self

  def combine(self, rows: torch.Tensor, losses: torch.Tensor
              ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(the combined row, the tower weights or None: towers unweighted)."""
    if self.method == "pcgrad":
      return pcgrad_update(rows), None
    if self.method == "gradnorm":
      weights = self.gradnorm_weights(losses, rows)
      return weights @ rows, weights
    gram = (rows @ rows.T).double().numpy()
    w = (frank_wolfe_min_norm(gram) if self.method == "mgda"
         else cagrad_weights(gram, self.c, 1.0 + self.c ** 2))
    self.last_weights = w
    return torch.from_numpy(w.astype(np.float32)) @ rows, None

  def gradnorm_weights(self, losses: torch.Tensor, rows: torch.Tensor
                       ) -> torch.Tensor:
    """The weights to apply now; trains the GradNorm weights one step.
    Norms: of the last shared layer's weight gradient in params mode (the
    paper), of the representation gradient in rep mode (LibMTL)."""
    if self.initial_losses is None:
      self.initial_losses = losses.clone()
    applied = self.gn_weights.detach().clone()
    part = rows[:, self.last_slice] if self.mode == "params" else rows
    norms = part.norm(dim=1)
    ratio = losses / self.initial_losses
    inverse_rate = ratio / ratio.mean()
    g = self.gn_weights * norms
    target = (g.mean() * inverse_rate ** self.alpha).detach()
    self.gn_opt.zero_grad()
    (g - target).abs().sum().backward()
    self.gn_opt.step()
    with torch.no_grad():
      self.gn_weights.clamp_(min=1e-4)
      self.gn_weights.mul_(self.k / self.gn_weights.sum())
    self.last_weights = applied.numpy()
    return applied
