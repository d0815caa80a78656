"""Batched, jitted sentence embeddings: texts -> np.ndarray [N, hidden].

Why: frozen item-text features (issue 18) are computed once per dataset, and
the benchmark measures this path.  Texts are tokenised with the model's
`tokenizers` tokenizer (truncated at the sentence model's max_seq_length),
sorted by length so a batch holds similar lengths, and each batch is padded
to a fixed batch size and to the smallest length bucket that holds it, so
the jitted function compiles once per bucket used, never per batch (a
last, partial batch is padded to the next power of two rows instead, so a
few texts do not pay for a full batch: at most log2(batch_size) more
compiles per bucket).  Padding never changes a row's embedding (padded
keys are masked, padded rows are dropped), so the output does not depend on
batch size, bucket or order.
"""
from __future__ import annotations

import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mtrec_jax.models.text.bert import SentenceEncoder
from mtrec_jax.models.text.weights import (PretrainedText, load_pretrained,
                                           locate_model_dir)

DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 512)


class TextEncoder:
  """A loaded sentence model with a jitted forward.

  Attributes:
    pretrained: the folder's config, pooling, params, tokenizer, identity.
    buckets: padded sequence lengths (capped at max_seq_length, which is
      always one of them).
    dtype: compute dtype of the encoder (parameters stay float32).
  """

  def __init__(self, pretrained: PretrainedText | None = None, *,
               buckets: Sequence[int] = DEFAULT_BUCKETS,
               dtype=jnp.float32):
    self.pretrained = pretrained or load_pretrained()
    max_len = self.pretrained.pooling.max_seq_length
    if any(int(b) < 2 for b in buckets):
      raise ValueError(f"buckets must be >= 2 tokens, got {tuple(buckets)}")
    self.buckets = tuple(sorted({min(int(b), max_len) for b in buckets}
                                | {max_len}))
    self.module = SentenceEncoder(self.pretrained.config,
                                  self.pretrained.pooling, dtype=dtype)
    self.variables = {"params": {"bert": jax.tree_util.tree_map(
        jnp.asarray, self.pretrained.params)}}
    self._apply = jax.jit(self.module.apply)

  @property
  def identity(self) -> str:
    return self.pretrained.identity

  @property
  def dim(self) -> int:
    return self.pretrained.config.hidden_size

  def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
    """Token ids per text ([CLS] ... [SEP], truncated, unpadded)."""
    texts = _check_texts(texts)
    return [e.ids for e in self.pretrained.tokenizer.encode_batch(texts)]

  def bucket(self, length: int) -> int:
    return next(b for b in self.buckets if b >= length)

  def encode_ids(self, ids: Sequence[Sequence[int]], batch_size: int = 64
                 ) -> np.ndarray:
    """Embeddings [N, hidden] float32 of already tokenised texts."""
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = np.zeros((len(ids), self.dim), np.float32)
    order = np.argsort([len(x) for x in ids], kind="stable")
    for start in range(0, len(ids), batch_size):
      rows = order[start:start + batch_size]
      t = self.bucket(max(len(ids[r]) for r in rows))
      b = min(batch_size, 1 << (len(rows) - 1).bit_length())
      tok = np.zeros((b, t), np.int32)
      mask = np.zeros((b, t), np.int32)
      for j, r in enumerate(rows):
        n = len(ids[r])
        if n > t:
          raise ValueError(f"text {r} has {n} tokens, more than the model's "
                           f"max_seq_length {self.buckets[-1]}")
        tok[j, :n], mask[j, :n] = ids[r], 1
      mask[len(rows):, 0] = 1  # filler rows: one [PAD] token, dropped below
      emb = self._apply(self.variables, tok, mask)
      out[rows] = np.asarray(emb)[:len(rows)]
    return out

  def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Embeddings [N, hidden] float32 of `texts` (L2-normalised when the
    model has a Normalize module, as all-MiniLM-L6-v2)."""
    return self.encode_ids(self.tokenize(texts), batch_size)


def _check_texts(texts) -> list[str]:
  if isinstance(texts, str):
    raise TypeError("texts must be a sequence of strings, got one string; "
                    "wrap it in a list")
  texts = list(texts)
  bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
  if bad:
    raise TypeError(f"texts[{bad[0]}] is {type(texts[bad[0]]).__name__}, not "
                    "str")
  return texts


@functools.lru_cache(maxsize=2)
def _default_encoder(model_dir: str) -> TextEncoder:
  return TextEncoder(load_pretrained(model_dir))


def encode_texts(texts: Sequence[str], batch_size: int = 64, *,
                 model_dir: str | os.PathLike | None = None) -> np.ndarray:
  """Sentence embeddings [N, hidden] float32 with the located text model
  (see `weights.locate_model_dir`); the loaded model is cached per resolved
  folder (two at most)."""
  return _default_encoder(str(locate_model_dir(model_dir))).encode(
      texts, batch_size)
