"""Cross-task connection modules: how K tasks share the encoded input.

Every module maps x [B, D] -> [K, B, H], one hidden representation per task
(leading task axis), and is registered in `MODELS` so an experiment picks it
by name.  Two families share their building blocks:

* expert mixtures (mmoe, cgc, ple) are stacks of one `ExtractionLevel`:
  a bank of shared and task-specific experts plus softmax gates;
* column models (single_task, cross_stitch, residual, cross_attention) run K
  per-task MLP columns and differ only in the mixer applied after each layer.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtrec_jax.models.towers import (MLP, StackedColumnLayer, StackedDense,
                                     StackedMLP)
from mtrec_jax.registry import MODELS

Dtype = Any

# One default per config key, shared by every module that has the key, so the
# union config of `build.default_model_config` is unambiguous.
DEFAULT_HIDDEN = (64, 32)
DEFAULT_NUM_EXPERTS = 4
DEFAULT_SHARED_EXPERTS = 1
DEFAULT_TASK_EXPERTS = 1


def _check_widths(owner: str, field: str, widths) -> None:
  if not widths or any(int(w) < 1 for w in widths):
    raise ValueError(f"{owner}.{field} must be a non-empty tuple of positive "
                     f"widths, got {widths!r}")


class Connection(nn.Module):
  """Base of the connection modules: the fields and checks they all share."""
  num_tasks: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  def __post_init__(self):
    if not isinstance(self.num_tasks, int) or self.num_tasks < 1:
      raise ValueError(f"{type(self).__name__}: num_tasks must be a positive "
                       f"int, got {self.num_tasks!r}")
    self.validate()
    super().__post_init__()

  def validate(self) -> None:
    """Raises ValueError on bad hyper-parameters (subclasses extend)."""

  @property
  def output_dim(self) -> int:
    """H, the width of each task's representation (each subclass defines it)."""
    raise TypeError(f"{type(self).__name__} does not define output_dim; "
                    f"every connection module must")


# ----------------------------------------------------------------- hard sharing
class _BottomConnection(Connection):
  """Connections built from MLP layers of widths `bottom_hidden`."""
  bottom_hidden: tuple[int, ...] = DEFAULT_HIDDEN

  def validate(self) -> None:
    _check_widths(type(self).__name__, "bottom_hidden", self.bottom_hidden)

  @property
  def output_dim(self) -> int:
    return self.bottom_hidden[-1]


@MODELS.register("shared_bottom")
class SharedBottom(_BottomConnection):
  """Hard parameter sharing: one bottom MLP, its output given to every task."""

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    h = MLP(self.bottom_hidden, dropout_rate=self.dropout_rate,
            dtype=self.dtype, name="bottom")(x, train=train)
    return jnp.stack([h] * self.num_tasks)


# ------------------------------------------------------------- expert mixtures
class TaskGates(nn.Module):
  """G softmax gates over C experts; input [B, D] (shared) or [G, B, D]."""
  num_gates: int
  num_choices: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    logits = StackedDense(self.num_gates, self.num_choices, self.dtype)(x)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return weights.astype(self.dtype)  # [G, B, C]


class ExtractionLevel(nn.Module):
  """One CGC extraction level (Tang et al., RecSys 2020).

  Task k's output mixes its own `num_task_experts` experts and the shared
  experts with a gate fed by task k's input.  With `shared_gate`, a further
  gate over all experts, fed by the shared input, gives the next level's shared
  input (PLE).  MMoE is the special case with no task experts.
  """
  num_tasks: int
  num_shared_experts: int
  num_task_experts: int
  expert_hidden: tuple[int, ...]
  shared_gate: bool = False
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, shared_in: jax.Array, task_in: Optional[jax.Array] = None,
               *, train: bool = False
               ) -> tuple[jax.Array, Optional[jax.Array]]:
    """shared_in [B, D]; task_in [K, B, D] or None (= shared_in for all)."""
    k, t, s = self.num_tasks, self.num_task_experts, self.num_shared_experts

    def experts(num: int, name: str, inputs: jax.Array) -> jax.Array:
      return StackedMLP(num, self.expert_hidden, self.dropout_rate,
                        dtype=self.dtype, name=name)(inputs, train=train)

    shared = experts(s, "shared_experts", shared_in) if s else None
    own = None
    if t:
      own_in = shared_in if task_in is None else jnp.repeat(task_in, t, axis=0)
      own = experts(k * t, "task_experts", own_in)
      own = own.reshape((k, t) + own.shape[1:])  # [K, T, B, H]
    gate_in = shared_in if task_in is None else task_in
    gates = TaskGates(k, t + s, self.dtype, name="task_gates")(gate_in)
    out = 0.0
    if t:
      out = out + jnp.einsum("kbt,ktbh->kbh", gates[..., :t], own)
    if s:
      out = out + jnp.einsum("kbs,sbh->kbh", gates[..., t:], shared)
    if not self.shared_gate:
      return out, None
    pool = [own.reshape((k * t,) + own.shape[2:])] if t else []
    pool = jnp.concatenate(pool + ([shared] if s else []), axis=0)
    weights = TaskGates(1, k * t + s, self.dtype, name="shared_gate")(
        shared_in)[0]
    return out, jnp.einsum("be,ebh->bh", weights, pool)


class _ExpertConnection(Connection):
  """Fields and checks common to the expert-mixture connections."""
  expert_hidden: tuple[int, ...] = DEFAULT_HIDDEN

  def validate(self) -> None:
    _check_widths(type(self).__name__, "expert_hidden", self.expert_hidden)
    for field in ("num_experts", "num_shared_experts", "num_task_experts",
                  "num_levels"):
      if getattr(self, field, 0) < 0:
        raise ValueError(f"{type(self).__name__}.{field} must be >= 0")

  @property
  def output_dim(self) -> int:
    return self.expert_hidden[-1]

  def level(self, shared_gate: bool, name: str, num_shared: int,
            num_task: int) -> ExtractionLevel:
    if num_shared + num_task < 1:
      raise ValueError(f"{type(self).__name__} needs at least one expert")
    return ExtractionLevel(self.num_tasks, num_shared, num_task,
                           self.expert_hidden, shared_gate, self.dropout_rate,
                           self.dtype, name=name)


@MODELS.register("mmoe")
class MMoE(_ExpertConnection):
  """Multi-gate Mixture-of-Experts (Ma et al., KDD 2018): shared experts, one
  softmax gate per task, every gate fed by x."""
  num_experts: int = DEFAULT_NUM_EXPERTS

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    out, _ = self.level(False, "level_0", self.num_experts, 0)(x, train=train)
    return out


@MODELS.register("cgc")
class CGC(_ExpertConnection):
  """Customized Gate Control (Tang et al., RecSys 2020): one PLE level; task
  k's gate mixes its own experts and the shared ones."""
  num_shared_experts: int = DEFAULT_SHARED_EXPERTS
  num_task_experts: int = DEFAULT_TASK_EXPERTS

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    out, _ = self.level(False, "level_0", self.num_shared_experts,
                        self.num_task_experts)(x, train=train)
    return out


@MODELS.register("ple")
class PLE(_ExpertConnection):
  """Progressive Layered Extraction (Tang et al., RecSys 2020): `num_levels`
  stacked CGC levels; below the top, a shared gate over all experts builds the
  next level's shared input and each task's gate output its task input."""
  num_shared_experts: int = DEFAULT_SHARED_EXPERTS
  num_task_experts: int = DEFAULT_TASK_EXPERTS
  num_levels: int = 2

  def validate(self) -> None:
    super().validate()
    if self.num_levels < 1:
      raise ValueError(f"ple.num_levels must be >= 1, got {self.num_levels}")

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    shared, tasks = x, None
    for i in range(self.num_levels):
      top = i == self.num_levels - 1
      tasks, shared = self.level(not top, f"level_{i}", self.num_shared_experts,
                                 self.num_task_experts)(shared, tasks,
                                                        train=train)
    return tasks


# ---------------------------------------------------------------- column models
@MODELS.register("single_task")
class SingleTask(_BottomConnection):
  """K independent bottom MLPs (no sharing): the single-task baseline in one
  model.  Subclasses add a cross-task mixer after every layer."""

  def mixer(self, name: str) -> Optional[nn.Module]:
    """The module (named `name`) mixing the K columns after a layer, or None."""
    del name
    return None

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    h = x
    for i, width in enumerate(self.bottom_hidden):
      h = StackedColumnLayer(self.num_tasks, width, self.dropout_rate,
                             dtype=self.dtype, name=f"layer_{i}")(h,
                                                                  train=train)
      mix = self.mixer(f"mix_{i}")
      if mix is not None:
        h = mix(h, train=train)
    return h


class CrossStitchUnit(nn.Module):
  """h'_k = sum_j alpha_kj h_j with a learned K x K matrix alpha."""
  num_tasks: int
  init_diagonal: float = 0.9
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    k = self.num_tasks
    diag = self.init_diagonal if k > 1 else 1.0
    off = (1.0 - diag) / max(k - 1, 1)
    init = np.full((k, k), off, np.float32)
    np.fill_diagonal(init, diag)
    alpha = self.param("alpha", lambda *_: jnp.asarray(init))
    return jnp.einsum("kj,jbh->kbh", alpha.astype(self.dtype), h)


class ResidualTaskMix(nn.Module):
  """h'_k = h_k + sum_{j != k} a_kj h_j; a starts at 0 (independent columns).

  Only the K(K-1) off-diagonal coefficients are parameters, param `coef`
  [K, K-1] (row k lists j = 0..K-1 without k).
  """
  num_tasks: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array, *, train: bool = False) -> jax.Array:
    del train
    k = self.num_tasks
    if k == 1:
      return h
    coef = self.param("coef", nn.initializers.zeros, (k, k - 1), jnp.float32)
    others = np.array([[j for j in range(k) if j != i] for i in range(k)])
    full = jnp.zeros((k, k), jnp.float32).at[
        np.arange(k)[:, None], others].set(coef)
    return h + jnp.einsum("kj,jbh->kbh", full.astype(self.dtype), h)


class TaskAttention(nn.Module):
  """Every task's hidden state attends over all K tasks' states (attention
  along the task axis), then residual + LayerNorm."""
  num_heads: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array, *, train: bool = False) -> jax.Array:
    tokens = jnp.swapaxes(h, 0, 1)  # [B, K, H]: tasks are the sequence.
    attended = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype,
        force_fp32_for_softmax=True)(tokens, tokens)
    attended = nn.Dropout(self.dropout_rate, deterministic=not train)(attended)
    tokens = nn.LayerNorm(dtype=self.dtype)(tokens + attended)
    return jnp.swapaxes(tokens, 0, 1)


@MODELS.register("cross_stitch")
class CrossStitch(SingleTask):
  """Cross-stitch networks (Misra et al., CVPR 2016): K columns mixed by a
  learned K x K unit after each layer (diagonal starts at cross_stitch_init)."""
  cross_stitch_init: float = 0.9

  def mixer(self, name: str) -> nn.Module:
    return CrossStitchUnit(self.num_tasks, self.cross_stitch_init, self.dtype,
                           name=name)


@MODELS.register("residual")
class ResidualCrossTask(SingleTask):
  """Residual cross-task links (ours): each column adds a learned, zero-init
  mix of the other columns' hidden states after every layer."""

  def mixer(self, name: str) -> nn.Module:
    return ResidualTaskMix(self.num_tasks, self.dtype, name=name)


@MODELS.register("cross_attention")
class CrossTaskAttention(SingleTask):
  """Cross-task self-attention (ours): after every layer the K columns'
  states attend over each other along the task axis."""
  num_heads: int = 2

  def validate(self) -> None:
    super().validate()
    if self.num_heads < 1 or any(w % self.num_heads
                                 for w in self.bottom_hidden):
      raise ValueError(f"{type(self).__name__}: every bottom_hidden width "
                       f"{self.bottom_hidden} must be a multiple of num_heads "
                       f"({self.num_heads})")

  def mixer(self, name: str) -> nn.Module:
    return TaskAttention(self.num_heads, self.dropout_rate, self.dtype,
                         name=name)
