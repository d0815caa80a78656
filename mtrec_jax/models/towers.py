"""Feed-forward blocks: a plain MLP and N independent MLPs run as one batch.

`StackedMLP` holds N members' weights in one [N, D_in, D_out] kernel per layer,
so experts (MMoE/PLE) and per-task columns (single-task, cross-stitch, ...)
cost one batched matmul per layer instead of N small ones.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any

# Each member's kernel is initialised as if it were its own Dense layer.
_stacked_kernel_init = nn.initializers.lecun_normal(
    in_axis=-2, out_axis=-1, batch_axis=(0,))


class MLP(nn.Module):
  """Dense -> activation -> dropout per hidden layer, then an optional linear
  output layer (no activation) of width `output_dim`."""
  hidden: tuple[int, ...] = ()
  output_dim: Optional[int] = None
  dropout_rate: float = 0.0
  activation: Callable[[jax.Array], jax.Array] = nn.relu
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    for width in self.hidden:
      x = self.activation(nn.Dense(width, dtype=self.dtype)(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    if self.output_dim is not None:
      x = nn.Dense(self.output_dim, dtype=self.dtype)(x)
    return x


class StackedDense(nn.Module):
  """N independent Dense layers applied at once.

  Input [B, D] (every member sees the same input) or [N, B, D] (member n sees
  row n); output [N, B, features].
  """
  num: int
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", _stacked_kernel_init,
                        (self.num, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros,
                      (self.num, self.features), jnp.float32)
    x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
    if x.ndim == 2:
      y = jnp.einsum("bd,ndf->nbf", x, kernel)
    elif x.ndim == 3 and x.shape[0] == self.num:
      y = jnp.einsum("nbd,ndf->nbf", x, kernel)
    else:
      raise ValueError(f"StackedDense({self.num}) takes [B, D] or "
                       f"[{self.num}, B, D] inputs, got shape {x.shape}")
    return y + bias[:, None, :]


class StackedMLP(nn.Module):
  """N independent MLPs (every layer activated); [B, D] or [N, B, D] ->
  [N, B, hidden[-1]]."""
  num: int
  hidden: tuple[int, ...]
  dropout_rate: float = 0.0
  activation: Callable[[jax.Array], jax.Array] = nn.relu
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    if not self.hidden:
      raise ValueError("StackedMLP needs at least one hidden layer width")
    for width in self.hidden:
      x = StackedColumnLayer(self.num, width, self.dropout_rate,
                             self.activation, self.dtype)(x, train=train)
    return x


class StackedColumnLayer(nn.Module):
  """One activated layer of N independent columns (StackedDense + act +
  dropout); the unit that per-layer cross-task mixing is interleaved with."""
  num: int
  features: int
  dropout_rate: float = 0.0
  activation: Callable[[jax.Array], jax.Array] = nn.relu
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    x = self.activation(StackedDense(self.num, self.features, self.dtype)(x))
    return nn.Dropout(self.dropout_rate, deterministic=not train)(x)
