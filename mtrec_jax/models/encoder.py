"""Transformer encoders for behaviour sequences, in two block layouts.

The encoder sees already-embedded tokens; learned position embeddings are
added by `embeddings.FeatureEncoder`, which knows each sequence's length and
padding convention, and asks `EncoderConfig` how to combine them
(`EncoderConfig.input_tokens`) and how to initialise its tables.

Layouts (`EncoderConfig.layout`):

* ``'pre_ln'`` (the default): BERT/ViT-style pre-LayerNorm blocks
  x + Attn(LN(x)), x + MLP(LN(x)) with a GELU MLP, dropout on both residual
  branches, flax's default initialisers, LayerNorm epsilon 1e-6.  Padded
  keys are masked out of every attention; a row that is all padding still
  gives finite outputs (its attention is uniform over the masked keys
  instead of a 0/0 softmax).
* ``'sasrec'``: the SASRec encoder of the public PyTorch reference
  (pmixer/SASRec.pytorch, `python/model.py` at its current default
  ``norm_first=False``; Kang & McAuley, ICDM 2018), detail by detail:
  item embeddings scaled by sqrt(embed_dim); position embeddings added only
  at real tokens, so a padding token's input is exactly zero (the reference
  reads row 0 of both tables, kept at zero); dropout on the summed input;
  post-LN blocks x = LN(x + MHA(x, x, x)), x = LN(x + FFN(x)) with torch's
  `MultiheadAttention` (q/k/v and output projections with biases, dropout
  on the attention probabilities drawn per element, no dropout on its
  output) and the point-wise FFN Conv1d(k=1) -> dropout -> ReLU ->
  Conv1d(k=1) -> dropout (`mlp_dim` wide; the reference uses the hidden
  width); a final LayerNorm (so the output is LN(LN(...))); every
  LayerNorm with epsilon 1e-8; the causal mask only (padding keys ARE
  attended to, as in the reference, which has no key-padding mask); and
  torch's initialisation as the reference's `main.py` leaves it: Xavier
  normal (untruncated) for every matrix (item table, position table,
  q/k/v as one [3E, E] matrix, output projection, FFN), zero attention
  biases, U(+-1/sqrt(fan_in)) FFN biases, LayerNorm ones and zeros.
  Position p of our [L] table is row p + 1 of the reference's [L + 1]
  table (its row 0 is the padding row), initialised with the same
  standard deviation.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtrec_jax.models import causal_attention

Dtype = Any
POOLINGS = ("last", "mean", "cls")
LAYOUTS = ("pre_ln", "sasrec")
# LayerNorm epsilon of the reference SASRec (torch.nn.LayerNorm(eps=1e-8)).
SASREC_LN_EPS = 1e-8


def xavier_normal(fan_in: int | None = None, fan_out: int | None = None):
  """torch.nn.init.xavier_normal_: N(0, 2 / (fan_in + fan_out)), not
  truncated (flax's `xavier_normal` truncates).  Fans default to those of a
  2-D [in, out] shape; give them to mimic a torch matrix of another shape."""
  def init(key, shape, dtype=jnp.float32):
    fi = shape[-2] if fan_in is None else fan_in
    fo = shape[-1] if fan_out is None else fan_out
    std = (2.0 / (fi + fo)) ** 0.5
    return std * jax.random.normal(key, shape, dtype)
  return init


def torch_bias_uniform(fan_in: int):
  """PyTorch's default bias of Linear/Conv: U(-1/sqrt(fan_in), ...)."""
  def init(key, shape, dtype=jnp.float32):
    bound = fan_in ** -0.5
    return jax.random.uniform(key, shape, dtype, -bound, bound)
  return init


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Hyper-parameters of the sequence encoder (one per sequence feature).

  Attributes:
    pooling: how `FeatureEncoder` turns [B, L, hidden] into [B, hidden]:
      'last' = last non-padding position, 'mean' = mean over non-padding
      positions, 'cls' = a learned token appended after the sequence.
    layout: 'pre_ln' (BERT-style blocks, the default) or 'sasrec' (the
      reference SASRec's blocks, inputs and initialisation; module
      docstring).
    attention: 'dense' (flax's attention over every [L, L] score, the
      default) or 'real_rows' ('sasrec' and causal only: the scores a
      left-padded batch needs, `causal_attention`; another dropout stream).
  """
  num_layers: int = 1
  num_heads: int = 2
  hidden_dim: int = 32
  mlp_dim: int = 64
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  causal: bool = False
  pooling: str = "mean"
  layout: str = "pre_ln"
  attention: str = "dense"

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
    if self.layout not in LAYOUTS:
      raise ValueError(f"encoder layout must be one of {LAYOUTS}, got "
                       f"{self.layout!r}")
    if self.attention not in causal_attention.IMPLS:
      raise ValueError(f"encoder attention must be one of "
                       f"{causal_attention.IMPLS}, got {self.attention!r}")
    if self.attention == "real_rows" and not (self.layout == "sasrec"
                                              and self.causal):
      raise ValueError("encoder attention 'real_rows' needs layout 'sasrec' "
                       "and causal=True (it relies on a causal mask and on "
                       "zero inputs at the leading padding); got layout "
                       f"{self.layout!r}, causal={self.causal}; use "
                       "attention 'dense'")
    if self.layout == "sasrec" and self.pooling == "cls":
      raise ValueError("encoder layout 'sasrec' has no [cls] token (its "
                       "inputs are the reference's); use pooling 'last' or "
                       "'mean'")

  def table_init(self, embed_dim: int):
    """Initialiser of an id -> vector table (FeatureEncoder's tables)."""
    if self.layout == "sasrec":
      return xavier_normal()
    return nn.initializers.normal(stddev=embed_dim ** -0.5)

  def position_init(self, max_len: int):
    """Initialiser of the [max_len (+1 for cls), hidden] position table;
    'sasrec' uses the std of the reference's [max_len + 1, hidden] one."""
    if self.layout == "sasrec":
      return xavier_normal(fan_in=max_len + 1, fan_out=self.hidden_dim)
    return nn.initializers.normal(stddev=0.02)

  def input_tokens(self, items: jax.Array, positions: jax.Array,
                   real: jax.Array) -> jax.Array:
    """The encoder's input from [B, L, E] item vectors (zero at padding),
    the [L, hidden] position vectors and the [B, L] real-token mask.
    'pre_ln': items + positions everywhere; 'sasrec': items * sqrt(E) +
    positions at real tokens only (a padding token's input is 0)."""
    if self.layout == "sasrec":
      scaled = items * jnp.asarray(items.shape[-1] ** 0.5, items.dtype)
      return scaled + jnp.where(real[..., None], positions, 0.0).astype(
          items.dtype)
    return items + positions


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


class SASRecBlock(nn.Module):
  """The reference SASRec's block (post-LN, `norm_first=False`):
  x = LN(x + MHA(x, x, x)); x = LN(x + FFN(x)); see the module docstring
  for the initialisation and where dropout acts."""
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  attention: str = "dense"
  position: str = "dense"  # causal_attention.MODES, for 'real_rows'

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, *, train: bool,
               lead: Optional[jax.Array] = None) -> jax.Array:
    deterministic = not train
    width = x.shape[-1]
    inits = dict(
        # torch keeps q/k/v as one [3E, E] in_proj_weight.
        kernel_init=xavier_normal(width, 3 * width),
        out_kernel_init=xavier_normal(width, width),
        bias_init=nn.initializers.zeros, out_bias_init=nn.initializers.zeros)
    if self.attention == "real_rows":
      a = causal_attention.RealRowAttention(
          num_heads=self.num_heads, dropout_rate=self.attention_dropout_rate,
          dtype=self.dtype, name="attention", **inits)(
              x, lead, mode=self.position, deterministic=deterministic)
    else:
      a = nn.MultiHeadDotProductAttention(
          num_heads=self.num_heads, dtype=self.dtype,
          dropout_rate=self.attention_dropout_rate, broadcast_dropout=False,
          force_fp32_for_softmax=True, name="attention", **inits)(
              x, x, mask=mask, deterministic=deterministic)
    x = nn.LayerNorm(epsilon=SASREC_LN_EPS, dtype=self.dtype,
                     name="attention_norm")(x + a)
    y = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=xavier_normal(),
                 bias_init=torch_bias_uniform(width), name="ffn_in")(x)
    y = nn.relu(nn.Dropout(self.dropout_rate,
                           deterministic=deterministic)(y))
    y = nn.Dense(width, dtype=self.dtype, kernel_init=xavier_normal(),
                 bias_init=torch_bias_uniform(self.mlp_dim),
                 name="ffn_out")(y)
    y = nn.Dropout(self.dropout_rate, deterministic=deterministic)(y)
    return nn.LayerNorm(epsilon=SASREC_LN_EPS, dtype=self.dtype,
                        name="ffn_norm")(x + y)


class TransformerEncoder(nn.Module):
  """[B, L, hidden] tokens + [B, L] padding mask -> [B, L, hidden].

  `padding_mask` is True at real tokens.  With `causal`, position t
  attends only to positions <= t.  Layout 'pre_ln' never attends to padded
  keys; 'sasrec' does (causal mask only, as the reference).
  """
  num_layers: int = 1
  num_heads: int = 2
  hidden_dim: int = 32
  mlp_dim: int = 64
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  causal: bool = False
  layout: str = "pre_ln"
  dtype: Dtype = jnp.float32
  attention: str = "dense"

  @classmethod
  def from_config(cls, cfg: EncoderConfig, dtype: Dtype = jnp.float32,
                  name: Optional[str] = None) -> TransformerEncoder:
    return cls(num_layers=cfg.num_layers, num_heads=cfg.num_heads,
               hidden_dim=cfg.hidden_dim, mlp_dim=cfg.mlp_dim,
               dropout_rate=cfg.dropout_rate,
               attention_dropout_rate=cfg.attention_dropout_rate,
               causal=cfg.causal, layout=cfg.layout, dtype=dtype,
               attention=cfg.attention, name=name)

  @nn.compact
  def __call__(self, x: jax.Array, padding_mask: jax.Array, *,
               train: bool = False) -> jax.Array:
    if x.ndim != 3 or x.shape[-1] != self.hidden_dim:
      raise ValueError(f"TransformerEncoder expects [B, L, {self.hidden_dim}] "
                       f"inputs, got {x.shape}")
    if padding_mask.shape != x.shape[:2]:
      raise ValueError(f"padding_mask shape {padding_mask.shape} does not "
                       f"match the tokens' [B, L] = {x.shape[:2]}")
    if self.layout not in LAYOUTS:
      raise ValueError(f"encoder layout must be one of {LAYOUTS}, got "
                       f"{self.layout!r}")
    sasrec = self.layout == "sasrec"
    real = padding_mask.astype(bool)
    if sasrec:  # keys masked by causality only, padding included
      real = jnp.ones_like(real)
    mask = attention_mask(real, self.causal)
    x = nn.Dropout(self.dropout_rate, deterministic=not train)(
        x.astype(self.dtype))
    if self.attention == "real_rows":
      if not (sasrec and self.causal):
        raise ValueError("attention 'real_rows' needs layout 'sasrec' and "
                         "causal=True")
      # Leading padding positions of each row (all of them if none is real).
      lead = jnp.where(padding_mask.any(-1),
                       jnp.argmax(padding_mask.astype(bool), axis=-1),
                       x.shape[1])
      for i in range(self.num_layers):
        position = ("first" if i == 0 else
                    "last" if i == self.num_layers - 1 else "dense")
        x = SASRecBlock(self.num_heads, self.mlp_dim, self.dropout_rate,
                        self.attention_dropout_rate, self.dtype,
                        attention="real_rows", position=position,
                        name=f"block_{i}")(x, mask, train=train, lead=lead)
    else:
      block = SASRecBlock if sasrec else EncoderBlock
      for i in range(self.num_layers):
        x = block(self.num_heads, self.mlp_dim, self.dropout_rate,
                  self.attention_dropout_rate, self.dtype,
                  name=f"block_{i}")(x, mask, train=train)
    eps = SASREC_LN_EPS if sasrec else 1e-6
    return nn.LayerNorm(epsilon=eps, dtype=self.dtype, name="final_norm")(x)
