"""LibMTL-style PyTorch train steps: the peer that `benchmarks.peers` times.

Why: the JAX step fuses the K per-task backward passes into one jitted
program; the usual PyTorch way (LibMTL's parameter-gradient mode) runs K
sequential ``loss_k.backward(retain_graph=True)`` calls, copies each task's
shared-parameter gradient into row k of a flat [K, P] matrix, combines the
rows on the host and writes the result back into ``.grad``.  This module is
that recipe, written from the papers (no LibMTL or torchjd code), for the
two benchmark models of `benchmarks.peers`, both mirrors of the JAX models:

* `SharedBottomNet` (`benchmarks.strategies.setup`): a shared bottom MLP
  (D -> 512 -> 512, ReLU after each layer), one tower per task (512 -> 64
  ReLU -> 1), mean squared error per task.
* `MMoENet` (the "mmoe" model of `benchmarks.throughput`): one embedding
  table per categorical feature (id 0 embeds to zeros), the numerics
  appended, N experts (ReLU MLPs) and one softmax gate per task over them,
  all reading the encoded input; task k's representation is its gate's
  mixture of the expert outputs, read by its tower (ReLU MLP -> 1 logit);
  mean binary cross-entropy on the logits.  Experts and gates hold their
  members' weights stacked ([N, D, H], applied with one einsum) as the JAX
  model does; LibMTL loops over a list of experts, which in PyTorch costs
  one kernel launch per expert, so the stacked form is the faster PyTorch
  formulation and the comparison does not favour JAX.

Adam(1e-3) on every parameter.

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
* ``gradnorm``: Chen et al. (ICML 2018), alpha = 1.5: ``G_k = w_k ||g_k||``
  with g_k row k of J -- in params mode the gradient w.r.t. ALL shared
  parameters, in rep mode w.r.t. task k's representation.  That is the
  convention of our JAX strategy (`mtrec_jax.weighting.gradnorm`: norms
  from the Gramian of whatever J the mode builds); the paper restricts
  params mode to the last shared layer's weights.  Targets
  ``mean(G) r_k^alpha`` held constant, one Adam(lr 0.025) step of ``w`` on
  ``sum_k |G_k - target_k|`` (our JAX strategy's optimiser and rate), then
  ``w`` clipped at 1e-4 and renormalised to sum to K; the step applies the
  weights from before the update, to the shared rows and to each tower's
  own gradient.
* ``cagrad``: Liu et al. (NeurIPS 2021), c = 0.5, rescale ``1 + c^2``: the
  dual ``min_{w in simplex} g_w . g_0 + c ||g_0|| ||g_w||`` solved on the
  Gramian with SciPy's SLSQP (as the paper's code), then
  ``d = (g_0 + c ||g_0|| g_w / ||g_w||) / (1 + c^2)``.

Both of LibMTL's gradient modes (`LibMTLStep`): "params" (the rows of J
are shared-parameter gradients) and "rep" (gradients w.r.t. the shared
representation, ``rep_grad=True``).  In rep mode a model whose tasks read
different representations (MMoE: one gate-mixed row per task) gets the
cotangent ``w_k g_k`` in task k's row, as LibMTL does for per-task
representations and as the JAX step does; every method is then a weight
vector (PCGrad's: the column sums of its projection coefficients, from the
Gramian).  Towers keep their own task's unweighted gradient (LibMTL's
convention, as our JAX engine), except for GradNorm, which weights the
losses.

Requires torch (and scipy for CAGrad); `benchmarks.peers` imports this
module only after checking that torch is installed.
"""
from __future__ import annotations

import abc

from typing import Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

METHODS = ("mean", "mgda", "pcgrad", "gradnorm", "cagrad")
Inputs = Union[torch.Tensor, dict[str, torch.Tensor]]


def mlp_tower(width: int, hidden: Sequence[int], out: int = 1
              ) -> nn.Sequential:
  """Linear + ReLU per hidden width, then a linear output layer (the JAX
  `towers.MLP`)."""
  layers = []
  for h in hidden:
    layers += [nn.Linear(width, h), nn.ReLU()]
    width = h
  return nn.Sequential(*layers, nn.Linear(width, out))


class MTLNet(nn.Module, abc.ABC):
  """What `LibMTLStep` needs of a model: a shared part (`represent`), one
  tower per task (`towers`, `head`), the task loss and the split of the
  parameters into shared ones (rows of J) and task-specific ones.

  `per_task_rep`: False when `represent` returns one [B, H] representation
  that every tower reads (shared bottom), True when it returns [K, B, H],
  row k read by tower k only (MMoE).
  """
  per_task_rep = False
  towers: nn.ModuleList

  @abc.abstractmethod
  def represent(self, inputs: Inputs) -> torch.Tensor:
    """Implemented by each model."""

  @abc.abstractmethod
  def task_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Implemented by each model."""

  @abc.abstractmethod
  def shared_parameters(self) -> list[nn.Parameter]:
    """Implemented by each model."""

  def task_rep(self, rep: torch.Tensor, k: int) -> torch.Tensor:
    return rep[k] if self.per_task_rep else rep

  def head(self, k: int, rep_k: torch.Tensor) -> torch.Tensor:
    return self.towers[k](rep_k)[:, 0]

  def forward(self, inputs: Inputs) -> list[torch.Tensor]:
    rep = self.represent(inputs)
    return [self.head(k, self.task_rep(rep, k))
            for k in range(len(self.towers))]

  def task_parameters(self, k: int) -> list[nn.Parameter]:
    return list(self.towers[k].parameters())


class SharedBottomNet(MTLNet):
  """The MLP benchmark model: shared bottom MLP, one MLP tower per task,
  squared error."""

  def __init__(self, input_dim: int, num_tasks: int,
               bottom: Sequence[int] = (512, 512), tower: int = 64):
    super().__init__()
    layers, width = [], input_dim
    for h in bottom:
      layers += [nn.Linear(width, h), nn.ReLU()]
      width = h
    self.bottom = nn.Sequential(*layers)
    self.towers = nn.ModuleList(mlp_tower(width, (tower,))
                                for _ in range(num_tasks))

  def represent(self, inputs: Inputs) -> torch.Tensor:
    return self.bottom(inputs)

  def task_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.mean((out - y) ** 2)

  def shared_parameters(self) -> list[nn.Parameter]:
    return list(self.bottom.parameters())


class StackedLinear(nn.Module):
  """N independent linear layers in one [N, D, F] kernel (the JAX
  `towers.StackedDense`): input [B, D] (every member reads it) or
  [N, B, D] (member n reads row n) -> [N, B, F].  Each member's kernel
  is drawn as its own layer's would be (normal, std 1/sqrt(D), close to
  the JAX LeCun-normal; the benchmark loads the JAX weights anyway)."""

  def __init__(self, num: int, in_features: int, out_features: int):
    super().__init__()
    self.kernel = nn.Parameter(torch.randn(num, in_features, out_features)
                               * in_features ** -0.5)
    self.bias = nn.Parameter(torch.zeros(num, out_features))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 2:
      y = torch.einsum("bd,ndf->nbf", x, self.kernel)
    else:
      y = torch.bmm(x, self.kernel)
    return y + self.bias[:, None, :]


class MMoENet(MTLNet):
  """Multi-gate Mixture-of-Experts (Ma et al., KDD 2018), the mirror of the
  JAX `MultiTaskModel` with the `mmoe` connection: feature encoder ->
  experts and per-task softmax gates -> [K, B, H] -> towers.

  `features`: (name, rows, width) in input order: an embedding table of
  rows x width when rows > 0 (id 0 embeds to zeros, as the JAX encoder),
  else a numeric input of `width` columns.  Shared parameters (the rows of
  J, as the JAX step's ``params['shared']``): the tables, the experts AND
  the gates; LibMTL would count the gates as task-specific.
  """
  per_task_rep = True

  def __init__(self, features: Sequence[tuple[str, int, int]],
               num_tasks: int, num_experts: int,
               expert_hidden: Sequence[int], tower_hidden: Sequence[int]):
    super().__init__()
    self.features = tuple(features)
    self.tables = nn.ModuleDict()
    for name, rows, width in self.features:
      if rows:
        self.tables[name] = nn.Embedding(rows, width)
        nn.init.normal_(self.tables[name].weight, std=width ** -0.5)
    input_dim = sum(width for _, _, width in self.features)
    self.experts = nn.ModuleList()
    width = input_dim
    for h in expert_hidden:
      self.experts.append(StackedLinear(num_experts, width, h))
      width = h
    self.gates = StackedLinear(num_tasks, input_dim, num_experts)
    self.towers = nn.ModuleList(mlp_tower(width, tower_hidden)
                                for _ in range(num_tasks))

  def encode(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """[B, D]: embeddings and numerics concatenated in `features` order."""
    parts = []
    for name, rows, width in self.features:
      value = inputs[name]
      if rows:
        mask = (value != 0).unsqueeze(-1).to(torch.float32)
        parts.append(self.tables[name](value) * mask)
      else:
        parts.append(value.reshape(value.shape[0], width))
    return torch.cat(parts, dim=-1)

  def represent(self, inputs: Inputs) -> torch.Tensor:
    x = self.encode(inputs)
    h = x
    for layer in self.experts:
      h = torch.relu(layer(h))  # [N, B, H]
    gates = torch.softmax(self.gates(x), dim=-1)  # [K, B, N]
    return torch.einsum("kbn,nbh->kbh", gates, h)

  def task_loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(out, y)

  def shared_parameters(self) -> list[nn.Parameter]:
    return (list(self.tables.parameters()) + list(self.experts.parameters())
            + list(self.gates.parameters()))


def as_tensors(inputs) -> Inputs:
  """A numpy [B, D] array -> float32 tensor; a {name: array} dict -> int64
  tensors for integer arrays (ids), float32 ones otherwise."""
  if not isinstance(inputs, Mapping):
    return torch.tensor(np.asarray(inputs, np.float32))
  out = {}
  for name, value in inputs.items():
    value = np.asarray(value)
    dtype = np.int64 if np.issubdtype(value.dtype, np.integer) else np.float32
    out[name] = torch.tensor(value.astype(dtype))
  return out


def num_parameters(model: nn.Module) -> int:
  return int(sum(p.numel() for p in model.parameters()))


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


def pcgrad_weights(gram: np.ndarray,
                   orders: Optional[Sequence[Sequence[int]]] = None
                   ) -> np.ndarray:
  """PCGrad as a weight vector, from the Gramian: each projected row is
  ``sum_j C_ij g_j`` (C starts at the identity; a projection of row i on
  g_j subtracts ``(C_i . G_j) / G_jj`` from C_ij), and the update is the
  sum of the projected rows, ``sum_j (sum_i C_ij) g_j``.  For per-task
  representations, whose rows are combined slot by slot; `orders` as in
  `pcgrad_update`."""
  k = gram.shape[0]
  coefs = np.eye(k)
  for i in range(k):
    order = (torch.randperm(k).tolist() if orders is None
             else list(orders[i]))
    for j in order:
      if j == i or gram[j, j] <= 0:
        continue
      dot = float(coefs[i] @ gram[:, j])
      if dot < 0:
        coefs[i, j] -= dot / gram[j, j]
  return coefs.sum(axis=0)


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

  `inputs`: the model's input, a [B, D] array (`SharedBottomNet`) or a
  {feature: array} dict (`MMoENet`); `ys`: one label array per task.
  `model`: the network (default: a `SharedBottomNet` built after seeding
  torch with `seed`).

  `mode` "params" (LibMTL's default): rows of J are the shared-parameter
  gradients from K backward passes through the shared part, and the
  combined vector is written into the shared ``.grad``.  "rep" (LibMTL's
  ``rep_grad=True``): each tower reads its own detached copy of the
  representation, the K backward passes stop there (rows: gradients w.r.t.
  the representation, [K, B * H]), and ONE backward pass through the shared
  part carries the combined row (one representation) or the weighted rows
  (one representation per task, see the module docstring).
  """

  def __init__(self, method: str, inputs, ys: Sequence[np.ndarray],
               *, model: Optional[MTLNet] = None, mode: str = "params",
               lr: float = 1e-3, seed: int = 0, cagrad_c: float = 0.5,
               gradnorm_alpha: float = 1.5, gradnorm_lr: float = 0.025):
    if method not in METHODS:
      raise ValueError(f"method {method!r} is not one of {METHODS}")
    if mode not in ("params", "rep"):
      raise ValueError(f"mode {mode!r} is not 'params' or 'rep'")
    torch.manual_seed(seed)
    self.method, self.mode = method, mode
    self.k = len(ys)
    self.inputs = as_tensors(inputs)
    self.ys = [torch.tensor(np.asarray(y, np.float32)) for y in ys]
    self.model = (model if model is not None
                  else SharedBottomNet(self.inputs.shape[1], self.k))
    self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)
    self.shared = self.model.shared_parameters()
    sizes = [p.numel() for p in self.shared]
    self.offsets = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    self.jac = torch.zeros(self.k, self.offsets[-1])
    self.c, self.alpha = cagrad_c, gradnorm_alpha
    self.gn_weights = torch.ones(self.k, requires_grad=True)
    self.gn_opt = torch.optim.Adam([self.gn_weights], lr=gradnorm_lr)
    self.initial_losses: Optional[torch.Tensor] = None
    self.last_weights: Optional[np.ndarray] = None

  def losses(self) -> list[torch.Tensor]:
    outs = self.model(self.inputs)
    return [self.model.task_loss(o, y) for o, y in zip(outs, self.ys)]

  def per_task_grads(self, losses: list[torch.Tensor]) -> torch.Tensor:
    """K sequential backward passes; row k of the [K, P] matrix is task k's
    shared gradient (the towers accumulate their own task's gradient)."""
    for k, loss in enumerate(losses):
      for p in self.shared:
        p.grad = None
      loss.backward(retain_graph=True)
      for i, p in enumerate(self.shared):
        row = self.jac[k, self.offsets[i]:self.offsets[i + 1]]
        if p.grad is None:  # a shared parameter task k does not read
          row.zero_()
        else:
          row.copy_(p.grad.reshape(-1))
    return self.jac

  def per_task_rep_grads(self) -> tuple[list[torch.Tensor], torch.Tensor,
                                        torch.Tensor]:
    """(losses, rep, [K, B * H] rows): towers on detached copies of (their
    row of) the representation, one backward pass per task down to its
    copy."""
    rep = self.model.represent(self.inputs)
    copies = [self.model.task_rep(rep, k).detach().clone().requires_grad_()
              for k in range(self.k)]
    losses = [self.model.task_loss(self.model.head(k, c), y)
              for k, (c, y) in enumerate(zip(copies, self.ys))]
    for loss in losses:
      loss.backward()
    rows = torch.stack([c.grad.reshape(-1) for c in copies])
    return losses, rep, rows

  def set_shared_grad(self, vec: torch.Tensor) -> None:
    for i, p in enumerate(self.shared):
      part = vec[self.offsets[i]:self.offsets[i + 1]].view_as(p)
      if p.grad is None:
        p.grad = part.clone()
      else:
        p.grad.copy_(part)

  def step(self) -> "LibMTLStep":
    self.opt.zero_grad(set_to_none=False)
    if self.method == "mean":
      torch.stack(self.losses()).mean().backward()
      self.opt.step()
      return self
    if self.mode == "params":
      tower_weights = self.params_backward()
    else:
      tower_weights = self.rep_backward()
    if tower_weights is not None:
      for k in range(self.k):
        for p in self.model.task_parameters(k):
          p.grad.mul_(tower_weights[k])
    self.opt.step()
    return self

  def params_backward(self) -> Optional[torch.Tensor]:
    """Sets the shared ``.grad`` to the combined row; returns the tower
    weights (None: towers unweighted)."""
    losses = self.losses()
    rows = self.per_task_grads(losses)
    combined, tower_weights = self.combine(rows,
                                           torch.stack(losses).detach())
    self.set_shared_grad(combined)
    return tower_weights

  def rep_backward(self) -> Optional[torch.Tensor]:
    """One backward pass through the shared part with the combined
    representation gradient; returns the tower weights."""
    losses, rep, rows = self.per_task_rep_grads()
    losses = torch.stack(losses).detach()
    if not self.model.per_task_rep:
      combined, tower_weights = self.combine(rows, losses)
      rep.backward(combined.view_as(rep))
      return tower_weights
    weights = self.task_weights(rows, losses)
    rep.backward((weights[:, None] * rows).view_as(rep))
    return weights if self.method == "gradnorm" else None

  def combine(self, rows: torch.Tensor, losses: torch.Tensor
              ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(the combined row, the tower weights or None: towers unweighted)."""
    if self.method == "pcgrad":
      return pcgrad_update(rows), None
    weights = self.task_weights(rows, losses)
    return weights @ rows, (weights if self.method == "gradnorm" else None)

  def task_weights(self, rows: torch.Tensor, losses: torch.Tensor
                   ) -> torch.Tensor:
    """The method's [K] weights of the rows (float32)."""
    if self.method == "gradnorm":
      return self.gradnorm_weights(losses, rows)
    gram = (rows @ rows.T).double().numpy()
    if self.method == "mgda":
      w = frank_wolfe_min_norm(gram)
    elif self.method == "cagrad":
      w = cagrad_weights(gram, self.c, 1.0 + self.c ** 2)
    else:
      w = pcgrad_weights(gram)
    self.last_weights = w
    return torch.from_numpy(w.astype(np.float32))

  def gradnorm_weights(self, losses: torch.Tensor, rows: torch.Tensor
                       ) -> torch.Tensor:
    """The weights to apply now; trains the GradNorm weights one step.
    Norms: of the whole rows of J (all shared parameters in params mode,
    the task's representation in rep mode), as the JAX strategy."""
    if self.initial_losses is None:
      self.initial_losses = losses.clone()
    applied = self.gn_weights.detach().clone()
    norms = rows.norm(dim=1)
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
