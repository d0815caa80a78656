"""Turns a feature batch into one dense input vector per example.

Conventions (the data pipeline must follow them):
* id 0 is padding/missing for every categorical and sequence feature; its
  embedding is exactly zero (masked, so the table's row 0 is never used).
* Sequences are LEFT-padded: the most recent item is at position L-1.  Learned
  position embeddings (held here, not in the encoder) are absolute, so
  position L-1 always means "most recent".  'last' pooling takes the last
  non-padding position, so right-padded data would still pool correctly, but
  its positions would no longer mean recency.
* Ids outside [0, vocab_size) of an unhashed feature look up NaN, so bad
  data shows up loudly instead of silently clipping to a real item.
"""
from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtrec_jax.models.encoder import EncoderConfig, TransformerEncoder
from mtrec_jax.models.features import (FeatureSpec, hash_ids, table_owner,
                                       validate_features)
from mtrec_jax.registry import closest

Dtype = Any
Batch = Mapping[str, Any]


class FeatureEncoder(nn.Module):
  """batch -> [B, D_in]: numeric features as-is, categorical embeddings, and
  one pooled Transformer encoding per sequence feature, concatenated in
  `features` order.

  Parameters: `embed_<name>` [rows, embed_dim] per owned table; per sequence
  feature `pos_<name>` positions, `cls_<name>` (cls pooling), `proj_<name>`
  (only when embed_dim != encoder.hidden_dim), the encoder `seq_<name>`,
  and `mask_<name>` [embed_dim] for the sequences named in `mask_tokens`
  (the learned [mask] input of masked-item and contrastive tasks).
  `item_text` (`models.item_text.TextItems`) adds item text to one feature's
  table (`text_<name>`; with item_repr 'text' that feature owns no id
  table).
  """
  features: tuple[FeatureSpec, ...]
  encoder: EncoderConfig = EncoderConfig()
  dtype: Dtype = jnp.float32
  mask_tokens: tuple[str, ...] = ()
  item_text: Any = None

  def setup(self):
    features = validate_features(self.features)
    cfg = self.encoder
    use_cls = cfg.pooling == "cls"
    tables, positions, cls_tokens, projections, encoders = {}, {}, {}, {}, {}
    masks = {}
    for name in self.mask_tokens:
      spec = next((f for f in features if f.name == name), None)
      if spec is None or spec.kind != "sequence":
        raise ValueError(f"mask_tokens names {name!r}, which is not a "
                         f"sequence feature")
      masks[name] = self.param(
          f"mask_{name}", nn.initializers.normal(stddev=spec.embed_dim ** -0.5),
          (spec.embed_dim,), jnp.float32)
    for spec in features:
      if spec.kind == "numeric":
        continue
      text_only = (self.item_text is not None
                   and self.item_text.feature == spec.name
                   and self.item_text.item_repr == "text")
      if not spec.share_with and not text_only:
        tables[spec.name] = self.param(
            f"embed_{spec.name}", cfg.table_init(spec.embed_dim),
            (spec.num_rows, spec.embed_dim), jnp.float32)
      if spec.kind != "sequence":
        continue
      positions[spec.name] = self.param(
          f"pos_{spec.name}", cfg.position_init(spec.max_len),
          (spec.max_len + int(use_cls), cfg.hidden_dim), jnp.float32)
      if use_cls:
        cls_tokens[spec.name] = self.param(
            f"cls_{spec.name}", nn.initializers.normal(stddev=0.02),
            (cfg.hidden_dim,), jnp.float32)
      if spec.embed_dim != cfg.hidden_dim:
        projections[spec.name] = nn.Dense(cfg.hidden_dim, dtype=self.dtype,
                                          name=f"proj_{spec.name}")
      encoders[spec.name] = TransformerEncoder.from_config(
          cfg, self.dtype, name=f"seq_{spec.name}")
    self.tables = tables
    self.positions = positions
    self.cls_tokens = cls_tokens
    self.projections = projections
    self.seq_encoders = encoders
    self.mask_vectors = masks
    if self.item_text is not None:
      from mtrec_jax.models.item_text import ItemTextTable
      spec = next((f for f in features if f.name == self.item_text.feature),
                  None)
      if spec is None or spec.kind == "numeric" or spec.share_with:
        raise ValueError(f"item text joins feature "
                         f"{self.item_text.feature!r}, which is not a "
                         "table-owning categorical or sequence feature")
      if self.item_text.text.vectors.shape[0] != spec.num_rows:
        raise ValueError(f"{self.item_text.text.vectors.shape[0]} item texts "
                         f"for the {spec.num_rows} rows of "
                         f"{spec.name!r}'s table")
      self.text_table = ItemTextTable(self.item_text, spec.embed_dim,
                                      self.dtype,
                                      name=f"text_{spec.name}")

  @property
  def output_dim(self) -> int:
    """Width D_in of the encoded vector (usable on an unbound module)."""
    return self.width()

  def width(self, names: tuple[str, ...] | None = None) -> int:
    """Width of the encoding of `names` (default: all features)."""
    widths = {"numeric": lambda s: s.dim,
              "categorical": lambda s: s.embed_dim,
              "sequence": lambda s: self.encoder.hidden_dim}
    return sum(widths[s.kind](s) for s in self.features
               if names is None or s.name in names)

  def _spec(self, name: str) -> FeatureSpec:
    for spec in self.features:
      if spec.name == name:
        return spec
    names = [s.name for s in self.features]
    raise KeyError(f"no feature {name!r}; did you mean "
                   f"{closest(name, names) or names}?")

  def embedding_table(self, name: str) -> jax.Array:
    """The float32 [rows, embed_dim] table feature `name` looks ids up in
    (the owner's table when it shares one); e.g. to score next items."""
    spec = self._spec(name)
    if spec.kind == "numeric":
      raise ValueError(f"feature {name!r} is numeric and has no table")
    by_name = {s.name: s for s in self.features}
    owner = table_owner(spec, by_name).name
    if self.item_text is None or owner != self.item_text.feature:
      return self.tables[owner]
    text = self._text_table_once()
    return text if self.item_text.item_repr == "text" else (
        self.tables[owner] + text)

  def _text_table_once(self) -> jax.Array:
    """The item-text table, computed once per application of the model.

    Every lookup of the item feature (the history's embedding, each
    auxiliary task's encoder pass, the next-item softmax, ...) reads the
    table; fine-tuned, it is BERT over every title, and XLA does not merge
    the repeated passes (nor their backward passes).  The bound module
    lives for one `apply`, so the value is kept on it for that apply."""
    cached = self.__dict__.get("_text_table_value")
    if cached is None:
      cached = self.text_table()
      object.__setattr__(self, "_text_table_value", cached)
    return cached

  def embed_ids(self, name: str, ids) -> jax.Array:
    """Embeds ids of feature `name` (any shape) -> [..., embed_dim]; id 0
    gives zeros and hashed features are hashed first."""
    by_name = {s.name: s for s in self.features}
    owner = table_owner(self._spec(name), by_name)
    ids = jnp.asarray(ids).astype(jnp.int32)
    rows = hash_ids(ids, owner.hash_buckets) if owner.hash_buckets else ids
    vectors = jnp.take(self.embedding_table(name), rows, axis=0, mode="fill",
                       fill_value=jnp.nan)
    return jnp.where((ids != 0)[..., None], vectors, 0.0).astype(self.dtype)

  def __call__(self, batch: Batch, *, train: bool = False,
               names: tuple[str, ...] | None = None) -> jax.Array:
    """Encodes the features named in `names` (default: all), in `features`
    order; an empty selection gives a [B, 0] array."""
    if names is not None:
      for name in names:
        self._spec(name)  # unknown names fail with suggestions
    parts, batch_size = [], None
    for spec in self.features:
      if names is not None and spec.name not in names:
        continue
      if spec.name not in batch:
        raise KeyError(f"batch has no feature {spec.name!r}; batch keys: "
                       f"{sorted(batch)}")
      value = jnp.asarray(batch[spec.name])
      if spec.kind == "numeric":
        if value.ndim == 1 and spec.dim == 1:
          value = value[:, None]
        _check_shape(spec, value, (spec.dim,), "[B, dim]")
        parts.append(value.astype(self.dtype))
      elif spec.kind == "categorical":
        _check_shape(spec, value, (), "[B]")
        parts.append(self.embed_ids(spec.name, value))
      else:
        _check_shape(spec, value, (spec.max_len,), "[B, max_len]")
        parts.append(self._encode_sequence(spec, value, train))
      if batch_size is not None and value.shape[0] != batch_size:
        raise ValueError(f"feature {spec.name!r} has batch size "
                         f"{value.shape[0]}, earlier features {batch_size}")
      batch_size = value.shape[0]
    if not parts:
      return jnp.zeros((_batch_size(batch), 0), self.dtype)
    return jnp.concatenate(parts, axis=-1)

  def _encode_sequence(self, spec: FeatureSpec, ids: jax.Array,
                       train: bool) -> jax.Array:
    """[B, L] ids -> [B, hidden] pooled encoding."""
    h, mask = self.encode_positions(spec.name, ids, train=train)
    return self.pool(h, mask)

  def encode_positions(self, name: str, ids: jax.Array, *, train: bool = False,
                       masked: jax.Array | None = None
                       ) -> tuple[jax.Array, jax.Array]:
    """Sequence feature `name`: [B, L] ids -> ([B, L', hidden], [B, L'] real).

    The per-position outputs that masked-item modelling scores and pooling
    reduces; L' = L + 1 with 'cls' pooling (the token last).  `masked` [B, L]
    bool replaces those positions' item embeddings by the learned
    `mask_<name>` vector (the feature must be in `mask_tokens`); masked
    positions still count as real tokens.
    """
    spec = self._spec(name)
    if spec.kind != "sequence":
      raise ValueError(f"feature {name!r} is {spec.kind}, not a sequence")
    length = spec.max_len
    ids = jnp.asarray(ids)
    mask = ids != 0
    x = self.embed_ids(name, ids)
    if masked is not None:
      if name not in self.mask_vectors:
        raise ValueError(f"feature {name!r} has no mask vector; add it to "
                         f"mask_tokens (a masked-item or contrastive task "
                         f"does this)")
      x = jnp.where(masked[..., None], self.mask_vectors[name].astype(x.dtype),
                    x)
    if name in self.projections:
      x = self.projections[name](x)
    positions = self.positions[name].astype(self.dtype)
    x = self.encoder.input_tokens(x, positions[:length], mask)
    if self.encoder.pooling == "cls":
      cls = self.cls_tokens[name].astype(self.dtype) + positions[length]
      x = jnp.concatenate(
          [x, jnp.broadcast_to(cls, (x.shape[0], 1, x.shape[-1]))], axis=1)
      mask = jnp.concatenate([mask, jnp.ones((x.shape[0], 1), bool)], axis=1)
    return self.seq_encoders[name](x, mask, train=train), mask

  def pool(self, h: jax.Array, mask: jax.Array) -> jax.Array:
    """[B, L', hidden] per-position outputs -> [B, hidden] (`encoder.pooling`)."""
    pooling = self.encoder.pooling
    if pooling == "cls":
      return h[:, -1]
    if pooling == "mean":
      weights = mask.astype(h.dtype)[..., None]
      count = jnp.maximum(weights.sum(axis=1), 1.0)
      return (h * weights).sum(axis=1) / count
    # 'last': the last real position; an empty history pools to zeros.
    length = mask.shape[1]
    last = length - 1 - jnp.argmax(mask[:, ::-1], axis=1)
    pooled = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
    return jnp.where(mask.any(axis=1, keepdims=True), pooled, 0.0)


def _batch_size(batch: Batch) -> int:
  return int(jnp.shape(next(iter(batch.values())))[0])


def _check_shape(spec: FeatureSpec, value: jax.Array, trailing: tuple[int, ...],
                 layout: str) -> None:
  """Static shape check: [B, *trailing], with a message naming the feature."""
  if value.ndim != 1 + len(trailing) or value.shape[1:] != trailing:
    raise ValueError(f"feature {spec.name!r} ({spec.kind}) must be a {layout} "
                     f"array with trailing shape {trailing}, got shape "
                     f"{value.shape}")
