"""The shared vocabulary of data, models and tasks: what a dataset feeds in.

A dataset describes its inputs as a tuple of `FeatureSpec`; the model builds
one embedding table (or none, for numeric features) per spec from it, so the
data and model sides agree on names, widths and vocabularies in one place.
This module is plain Python (no jax, no flax), so `mtrec_jax.data` can use it
without importing the models, and the models and tasks import it from here.
The task side of the vocabulary, `mtrec_jax.tasks.spec.TaskSpec`, stays with
the task logic (its loss and predictions); data may import `tasks.spec`.

Batch layout (a `dict[str, array]`; extra keys such as labels are ignored)::

  numeric      [B, dim] float32 (a [B] array is accepted when dim == 1)
  categorical  [B] int32, ids in [0, vocab_size); 0 = padding / missing
  sequence     [B, max_len] int32, LEFT-padded with 0, so the most recent item
               sits at position max_len - 1 (see `models.embeddings`)
"""
from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping

KINDS = ("numeric", "categorical", "sequence")


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
  """One model input.

  Attributes:
    name: key in the batch dict.
    kind: 'numeric' | 'categorical' | 'sequence'.
    dim: numeric only, width of the float array [B, dim].
    vocab_size: categorical/sequence, ids lie in [0, vocab_size); id 0 is
      padding.  May be 0 when `hash_buckets` > 0 (unbounded ids) or when the
      table is borrowed through `share_with`.
    embed_dim: width of the embedding vectors.
    hash_buckets: > 0 hashes every non-zero id into buckets 1..hash_buckets-1
      (0 stays padding); the table then has `hash_buckets` rows.
    max_len: sequence only, the length L of the [B, L] id array.
    share_with: name of another categorical/sequence feature whose embedding
      table this feature reuses (e.g. target item and history items).
  """
  name: str
  kind: str
  dim: int = 1
  vocab_size: int = 0
  embed_dim: int = 16
  hash_buckets: int = 0
  max_len: int = 0
  share_with: str = ""

  def __post_init__(self):
    where = f"FeatureSpec {self.name!r}"
    if not self.name or not isinstance(self.name, str):
      raise ValueError(f"FeatureSpec needs a non-empty string name, got "
                       f"{self.name!r}")
    if self.kind not in KINDS:
      raise ValueError(f"{where}: kind must be one of {KINDS}, got "
                       f"{self.kind!r}")
    if self.kind == "numeric":
      if self.dim < 1:
        raise ValueError(f"{where}: numeric features need dim >= 1, got "
                         f"{self.dim}")
      if (self.vocab_size or self.hash_buckets or self.max_len
          or self.share_with):
        raise ValueError(f"{where}: numeric features take only `dim`; drop "
                         "vocab_size/hash_buckets/max_len/share_with")
      return
    if self.embed_dim < 1:
      raise ValueError(f"{where}: embed_dim must be >= 1, got {self.embed_dim}")
    if self.vocab_size < 0 or self.hash_buckets < 0:
      raise ValueError(f"{where}: vocab_size and hash_buckets must be >= 0")
    if self.hash_buckets == 1:
      raise ValueError(f"{where}: hash_buckets=1 leaves no bucket besides "
                       "padding; use hash_buckets >= 2 (or 0 to disable)")
    if not self.share_with and self.vocab_size < 2 and not self.hash_buckets:
      raise ValueError(
          f"{where}: set vocab_size >= 2 (id 0 is padding), or "
          "hash_buckets > 0 for unbounded ids, or share_with=<feature> to "
          "borrow a table")
    if self.share_with == self.name:
      raise ValueError(f"{where}: share_with names the feature itself; leave "
                       "it empty to own a table")
    if self.kind == "sequence" and self.max_len < 1:
      raise ValueError(f"{where}: sequence features need max_len >= 1 (the "
                       "length L of the [B, L] id array)")
    if self.kind == "categorical" and self.max_len:
      raise ValueError(f"{where}: max_len is for sequence features; use "
                       "kind='sequence' or drop max_len")

  @property
  def num_rows(self) -> int:
    """Rows of this feature's own embedding table (ignores `share_with`)."""
    return self.hash_buckets if self.hash_buckets else self.vocab_size


def table_owner(spec: FeatureSpec, by_name: Mapping[str, FeatureSpec]
                ) -> FeatureSpec:
  """The spec whose table `spec` uses (itself unless it shares one)."""
  return by_name[spec.share_with] if spec.share_with else spec


def validate_features(features: Iterable[FeatureSpec]
                      ) -> tuple[FeatureSpec, ...]:
  """Checks a feature set as a whole: unique names and sound table sharing."""
  features = tuple(features)
  if not features:
    raise ValueError("the model needs at least one FeatureSpec")
  by_name: dict[str, FeatureSpec] = {}
  for spec in features:
    if not isinstance(spec, FeatureSpec):
      raise TypeError(f"features must be FeatureSpec instances, got {spec!r}")
    if spec.name in by_name:
      raise ValueError(f"feature {spec.name!r} is declared twice; feature "
                       "names must be unique")
    by_name[spec.name] = spec
  for spec in features:
    if not spec.share_with:
      continue
    where = f"feature {spec.name!r}"
    owner = by_name.get(spec.share_with)
    if owner is None:
      raise ValueError(f"{where}: share_with={spec.share_with!r} is not a "
                       f"feature; declared features: {sorted(by_name)}")
    if owner.kind == "numeric":
      raise ValueError(f"{where}: cannot share the table of numeric feature "
                       f"{owner.name!r}")
    if owner.share_with:
      raise ValueError(f"{where}: shares with {owner.name!r}, which itself "
                       f"shares with {owner.share_with!r}; point share_with at "
                       f"{owner.share_with!r} directly")
    if spec.embed_dim != owner.embed_dim:
      raise ValueError(f"{where}: embed_dim {spec.embed_dim} differs from the "
                       f"shared table of {owner.name!r} ({owner.embed_dim}); "
                       "make them equal")
    for field in ("vocab_size", "hash_buckets"):
      mine, theirs = getattr(spec, field), getattr(owner, field)
      if mine and mine != theirs:
        raise ValueError(f"{where}: {field}={mine} differs from the shared "
                         f"table of {owner.name!r} ({theirs}); set it to "
                         f"{theirs} or 0")
  return features
