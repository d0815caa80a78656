"""A BERT encoder (Devlin et al., NAACL 2019) and a sentence encoder on it.

Why: issue 18 uses a pre-trained sentence model (all-MiniLM-L6-v2: a 6-layer,
384-wide BERT trained by sentence-transformers) as an item-text encoder.  This
is the same computation as transformers' `BertModel` in inference, written
here in flax.linen so it runs on any JAX device without torch, and so its
parameters are an ordinary subtree that can sit under ``params['shared']``
for fine-tuning.

The computation (names as in the checkpoint, see `weights.py`):
* embeddings: word + learned absolute position (0..T-1) + token type
  (all 0 unless given), then LayerNorm, then dropout;
* post-LN blocks: h = LN(x + Dropout(Dense(MHA(x)))),
  out = LN(h + Dropout(Dense(act(Dense(h))))); the activation is the
  config's `hidden_act` ('gelu' = the exact erf GELU, as transformers');
  attention is scaled dot-product with 1/sqrt(head_dim), padded keys masked
  (a row always keeps [CLS], so no row is all masked), dropout on the
  attention probabilities;
* every LayerNorm with the config's epsilon (1e-12 for BERT).
`SentenceEncoder` adds sentence-transformers' pooling: mean over the tokens
the attention mask keeps (sum / max(count, 1e-9)), [CLS] or max as the
pooling config says, then, when the model has a Normalize module,
x / max(||x||_2, 1e-12) (torch's `F.normalize`).

Deliberate differences from transformers: masked scores are set to the
dtype's lowest value by `jnp.where` instead of adding it (the same softmax);
no pooler layer (``pooler.dense`` is not used by the sentence model); no
relative position types, cross-attention or KV cache.  `dtype` is the
compute dtype (float32 by default; bfloat16 on accelerators), parameters stay
float32; LayerNorm statistics and the softmax are computed in float32.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtrec_jax.models.text.weights import BertConfig, PoolingConfig

Dtype = Any


def activation(name: str):
  """transformers' ACT2FN entries that BERT checkpoints use."""
  if name == "gelu":
    return lambda x: nn.gelu(x, approximate=False)
  if name in ("gelu_new", "gelu_pytorch_tanh"):
    return lambda x: nn.gelu(x, approximate=True)
  if name == "relu":
    return nn.relu
  raise ValueError(f"unknown hidden_act {name!r}")


class BertEmbeddings(nn.Module):
  config: BertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, token_type_ids, deterministic: bool):
    c = self.config
    t = input_ids.shape[1]
    embed = lambda n, name: nn.Embed(n, c.hidden_size, dtype=self.dtype,  # noqa: E731
                                     name=name)
    x = (embed(c.vocab_size, "word_embeddings")(input_ids)
         + embed(c.max_position_embeddings, "position_embeddings")(
             jnp.arange(t)[None, :])
         + embed(c.type_vocab_size, "token_type_embeddings")(token_type_ids))
    x = nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype,
                     name="LayerNorm")(x)
    return nn.Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)


class BertSelfAttention(nn.Module):
  """Multi-head attention with separate q/k/v/output Dense layers (the
  checkpoint's layout) and a key-padding mask."""
  config: BertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask, deterministic: bool):
    c = self.config
    heads = c.num_attention_heads
    head_dim = c.hidden_size // heads
    b, t, _ = x.shape
    dense = lambda name: nn.Dense(c.hidden_size, dtype=self.dtype, name=name)  # noqa: E731
    split = lambda y: y.reshape(b, t, heads, head_dim)  # noqa: E731
    q, k, v = (split(dense(n)(x)) for n in ("query", "key", "value"))
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(head_dim))
    scores = jnp.where(mask[:, None, None, :], scores,
                       jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    probs = nn.Dropout(c.attention_probs_dropout_prob)(
        probs, deterministic=deterministic).astype(self.dtype)
    ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, t, c.hidden_size)
    return dense("output")(ctx)


class BertLayer(nn.Module):
  """One post-LN transformer block."""
  config: BertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask, deterministic: bool):
    c = self.config
    drop = nn.Dropout(c.hidden_dropout_prob)
    ln = lambda name: nn.LayerNorm(epsilon=c.layer_norm_eps, dtype=self.dtype,  # noqa: E731
                                   name=name)
    a = BertSelfAttention(c, self.dtype, name="attention")(x, mask,
                                                            deterministic)
    x = ln("attention_LayerNorm")(x + drop(a, deterministic=deterministic))
    h = nn.Dense(c.intermediate_size, dtype=self.dtype, name="intermediate")(x)
    h = activation(c.hidden_act)(h)
    h = nn.Dense(c.hidden_size, dtype=self.dtype, name="output")(h)
    return ln("output_LayerNorm")(x + drop(h, deterministic=deterministic))


class BertEncoder(nn.Module):
  """Token ids -> the last layer's token states [B, T, hidden].

  `attention_mask` [B, T] is 1 (or True) at real tokens; `token_type_ids`
  defaults to zeros.  T must not exceed the position table."""
  config: BertConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, attention_mask,
               token_type_ids: Optional[jax.Array] = None,
               deterministic: bool = True, *, start: int = 0,
               stop: Optional[int] = None, hidden: Optional[jax.Array] = None):
    """`start`/`stop`: run only layers start..stop-1; with start > 0 the
    input is `hidden` [B, T, hidden], the states after layer start-1 (and
    `input_ids` is ignored), so constant lower layers can be run once
    outside a training step (`models.item_text`)."""
    c = self.config
    stop = c.num_hidden_layers if stop is None else stop
    if not 0 <= start <= stop <= c.num_hidden_layers:
      raise ValueError(f"layers {start}..{stop}: the model has "
                       f"{c.num_hidden_layers}")
    mask = attention_mask.astype(bool)
    if start > 0:
      if hidden is None:
        raise ValueError(f"start={start} needs the states after layer "
                         f"{start - 1} (hidden=)")
      x = hidden
      for i in range(start, stop):
        x = BertLayer(c, self.dtype, name=f"layer_{i}")(x, mask,
                                                         deterministic)
      return x
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids must be [batch, length], got shape "
                       f"{input_ids.shape}")
    if input_ids.shape[1] > c.max_position_embeddings:
      raise ValueError(
          f"sequence length {input_ids.shape[1]} exceeds the position table "
          f"({c.max_position_embeddings}); truncate the tokens first")
    if token_type_ids is None:
      token_type_ids = jnp.zeros_like(input_ids)
    x = BertEmbeddings(c, self.dtype, name="embeddings")(
        input_ids, token_type_ids, deterministic)
    for i in range(stop):
      x = BertLayer(c, self.dtype, name=f"layer_{i}")(x, mask, deterministic)
    return x


def pool(hidden, attention_mask, pooling: PoolingConfig):
  """sentence-transformers' Pooling (+ Normalize) on [B, T, H] states, in
  float32."""
  hidden = hidden.astype(jnp.float32)
  m = attention_mask.astype(jnp.float32)[..., None]
  if pooling.mode == "mean":
    out = (hidden * m).sum(1) / jnp.maximum(m.sum(1), 1e-9)
  elif pooling.mode == "cls":
    out = hidden[:, 0]
  else:  # max: padded positions can never win (as sentence-transformers)
    out = jnp.where(m > 0, hidden, -1e9).max(1)
  if pooling.normalize:
    norm = jnp.linalg.norm(out, axis=-1, keepdims=True)
    out = out / jnp.maximum(norm, 1e-12)
  return out


class SentenceEncoder(nn.Module):
  """BERT + the sentence model's pooling: token ids -> [B, hidden] embeddings.

  Its parameters are those of `BertEncoder` under the name ``bert``:
  ``{'params': {'bert': PretrainedText.params}}``."""
  config: BertConfig
  pooling: PoolingConfig
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, input_ids, attention_mask,
               token_type_ids: Optional[jax.Array] = None,
               deterministic: bool = True, *, start: int = 0,
               hidden: Optional[jax.Array] = None):
    """`start`, `hidden`: from the states after layer start-1 on (see
    `BertEncoder`)."""
    hidden = BertEncoder(self.config, self.dtype, name="bert")(
        input_ids, attention_mask, token_type_ids, deterministic,
        start=start, hidden=hidden)
    return pool(hidden, attention_mask, self.pooling)
