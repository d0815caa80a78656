"""A BERT-style (pre-LayerNorm) Transformer encoder for behaviour sequences.

The encoder sees already-embedded tokens; learned position embeddings are
added by `embeddings.FeatureEncoder`, which knows each sequence's length and
padding convention.  Padded keys are masked out of every attention; a row that
is all padding still gives finite outputs (its attention is uniform over the
masked keys instead of a 0/0 softmax).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
POOLINGS = ("last", "mean", "cls")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Hyper-parameters of the sequence encoder (one per sequence feature).

  Attributes:
    pooling: how `FeatureEncoder` turns [B, L, hidden] into [B, hidden]:
      'last' = last non-padding position, 'mean' = mean over non-padding
      positions, 'cls' = a learned token appended after the sequence.
  """
  num_layers: int = 1
  num_heads: int = 2
  hidden_dim: int = 32
  mlp_dim: int = 64
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  causal: bool = False
  pooling: str = "mean"

  def __post_init__(self):
    if self.num_layers < 0:
      raise ValueError(
          f"encoder num_layers must be >= 0, got {self.num_layers}")
    if self.num_heads < 1 or self.hidden_dim % self.num_heads:
      raise ValueError(f"encoder hidden_dim ({self.hidden_dim}) must be a "
                       f"multiple of num_heads ({self.num_heads})")
    if self.mlp_dim < 1:
      raise ValueError(f"encoder mlp_dim must be >= 1, got {self.mlp_dim}")
    for name in ("dropout_rate", "attention_dropout_rate"):
      if not 0.0 <= getattr(self, name) < 1.0:
        raise ValueError(f"encoder {name} must be in [0, 1), got "
                         f"{getattr(self, name)}")
    if self.pooling not in POOLINGS:
      raise ValueError(f"encoder pooling must be one of {POOLINGS}, got "
                       f"{self.pooling!r}")


def attention_mask(padding_mask: jax.Array, causal: bool) -> jax.Array:
  """[B, L] bool (True = real token) -> [B, 1, L, L] bool attention mask."""
  length = padding_mask.shape[-1]
  mask = jnp.broadcast_to(padding_mask[:, None, None, :],
                          (padding_mask.shape[0], 1, length, length))
  if causal:
    mask = mask & jnp.tril(jnp.ones((length, length), bool))
  return mask


class EncoderBlock(nn.Module):
  """x + Attn(LN(x)), then x + MLP(LN(x)) (pre-LN, as in later BERT/ViT)."""
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool
               ) -> jax.Array:
    deterministic = not train
    y = nn.LayerNorm(dtype=self.dtype)(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype,
        dropout_rate=self.attention_dropout_rate,
        force_fp32_for_softmax=True)(y, y, mask=mask,
                                     deterministic=deterministic)
    x = x + nn.Dropout(self.dropout_rate, deterministic=deterministic)(y)
    y = nn.LayerNorm(dtype=self.dtype)(x)
    y = nn.gelu(nn.Dense(self.mlp_dim, dtype=self.dtype)(y))
    y = nn.Dropout(self.dropout_rate, deterministic=deterministic)(y)
    y = nn.Dense(x.shape[-1], dtype=self.dtype)(y)
    return x + nn.Dropout(self.dropout_rate, deterministic=deterministic)(y)


class TransformerEncoder(nn.Module):
  """[B, L, hidden] tokens + [B, L] padding mask -> [B, L, hidden].

  `padding_mask` is True at real tokens; padded keys are never attended to.
  With `causal`, position t attends only to positions <= t.
  """
  num_layers: int = 1
  num_heads: int = 2
  hidden_dim: int = 32
  mlp_dim: int = 64
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  causal: bool = False
  dtype: Dtype = jnp.float32

  @classmethod
  def from_config(cls, cfg: EncoderConfig, dtype: Dtype = jnp.float32,
                  name: Optional[str] = None) -> TransformerEncoder:
    return cls(num_layers=cfg.num_layers, num_heads=cfg.num_heads,
               hidden_dim=cfg.hidden_dim, mlp_dim=cfg.mlp_dim,
               dropout_rate=cfg.dropout_rate,
               attention_dropout_rate=cfg.attention_dropout_rate,
               causal=cfg.causal, dtype=dtype, name=name)

  @nn.compact
  def __call__(self, x: jax.Array, padding_mask: jax.Array, *,
               train: bool = False) -> jax.Array:
    if x.ndim != 3 or x.shape[-1] != self.hidden_dim:
      raise ValueError(f"TransformerEncoder expects [B, L, {self.hidden_dim}] "
                       f"inputs, got {x.shape}")
    if padding_mask.shape != x.shape[:2]:
      raise ValueError(f"padding_mask shape {padding_mask.shape} does not "
                       f"match the tokens' [B, L] = {x.shape[:2]}")
    mask = attention_mask(padding_mask.astype(bool), self.causal)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(
        x.astype(self.dtype))
    for i in range(self.num_layers):
      x = EncoderBlock(self.num_heads, self.mlp_dim, self.dropout_rate,
                       self.attention_dropout_rate, self.dtype,
                       name=f"block_{i}")(x, mask, train=train)
    return nn.LayerNorm(dtype=self.dtype, name="final_norm")(x)
