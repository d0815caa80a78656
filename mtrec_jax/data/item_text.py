"""Item texts and their frozen sentence embeddings, cached with the dataset.

Why: issue 18 feeds a pre-trained sentence model's view of each item to the
recommenders.  For MovieLens the item text is built from `u.item`:
  fields 'title'         the title as MovieLens writes it, with its year
                         ("Toy Story (1995)") - the default;
  fields 'title+genres'  "<title> | <genre>, <genre>" (the genres are also
                         the `genre_all` task's labels, so this one leaks the
                         genre task's answer into the item representation;
                         it is there to measure that, not as a default).
Padding id 0 (and an id MovieLens does not list) gets the empty text.

`ItemText` holds, per item id, the text, the token ids of the text model
(for fine-tuning, `models.item_text`) and the frozen embeddings [V, hidden]
computed once with `models.text.TextEncoder`.  The embeddings are cached in
``<prepared-dataset dir>/item_text/`` (data.tfds_dir, $MTREC_TFDS_DIR or
~/.cache/mtrec_jax/tfds, where the ArrayRecord copy lives) as one .npz per
key; the key covers the text model's identity (`models.text.model_identity`:
a SHA-256 of its weights, config and tokenizer files), the dataset's
identity (`data.identity.identity`: the source files' content hash), the
text fields, a hash of the texts themselves and `CACHE_VERSION`.  A cache
file whose stored key differs from the wanted one (another model, edited
data, a changed text rule) is never read: it is rebuilt and replaced.
Writes go to a temporary file in the same folder, then `os.replace`, so a
reader sees the old file or the new one, never half of one; two processes
building at once both write whole files and the last rename wins.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import tempfile
from typing import Any, Callable, Sequence

import numpy as np

CACHE_VERSION = 1
FIELDS = ("title", "title+genres")
CACHE_SUBDIR = "item_text"


def item_texts(titles: Sequence[str], genre_ids: Sequence[Sequence[int]],
               genre_names: Sequence[str], fields: str = "title"
               ) -> tuple[str, ...]:
  """Per item id, the text `fields` asks for (see the module docstring);
  an empty title gives the empty text."""
  if fields not in FIELDS:
    from mtrec_jax.registry import unknown_name_message
    raise ValueError("model.text.fields: " + unknown_name_message(
        "fields", fields, FIELDS))
  if len(titles) != len(genre_ids):
    raise ValueError(f"{len(titles)} titles but {len(genre_ids)} genre rows; "
                     "both are indexed by item id")
  out = []
  for title, genres in zip(titles, genre_ids):
    if not title or fields == "title":
      out.append(title or "")
    else:
      out.append(f"{title} | {', '.join(genre_names[g] for g in genres)}")
  return tuple(out)


@dataclasses.dataclass(frozen=True, eq=False)
class ItemText:
  """One dataset's item texts and what the text model makes of them.

  Attributes:
    feature: the item feature whose table the text joins ('hist_items').
    key: the cache key (a hex digest; see the module docstring); equality
      and hashing go by it, so a model holding an `ItemText` stays hashable.
    texts: per item id (row 0 = padding, '').
    token_ids: int32 [V, T] the texts' token ids, right-padded with 0 to T
      (the smallest bucket of the encoder that holds the longest text).
    mask: int32 [V, T], 1 at real tokens (every row has at least [CLS]).
    vectors: float32 [V, hidden] the frozen sentence embeddings.
    model_identity: `models.text.model_identity` of the text model.
    model_dir: where its files were read (for fine-tuning to reload them).
  """
  feature: str
  key: str
  texts: tuple[str, ...]
  token_ids: np.ndarray
  mask: np.ndarray
  vectors: np.ndarray
  model_identity: str
  model_dir: str

  def __hash__(self):
    return hash(self.key)

  def __eq__(self, other):
    return isinstance(other, ItemText) and other.key == self.key

  @property
  def dim(self) -> int:
    return int(self.vectors.shape[1])


def cache_key(model_identity: str, data_identity: Any, fields: str,
              texts: Sequence[str]) -> str:
  blob = json.dumps({"version": CACHE_VERSION, "model": model_identity,
                     "data": data_identity, "fields": fields,
                     "texts": hashlib.sha256("\0".join(texts).encode())
                     .hexdigest()}, sort_keys=True)
  return hashlib.sha256(blob.encode()).hexdigest()


def cache_dir(tfds_dir: str | os.PathLike | None = None) -> pathlib.Path:
  from mtrec_jax.data.array_record import tfds_dir as resolve
  return resolve(tfds_dir or None) / CACHE_SUBDIR


def _write_atomic(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                             suffix=".npz")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


def _read(path: pathlib.Path, key: str) -> dict[str, np.ndarray] | None:
  """The cached arrays when `path` holds `key`'s, else None (absent,
  another key, or unreadable: all mean rebuild)."""
  try:
    with np.load(path, allow_pickle=False) as z:
      if str(z["key"]) != key:
        return None
      return {k: z[k] for k in ("token_ids", "mask", "vectors")}
  except (OSError, KeyError, ValueError):
    return None


def build_item_text(texts: Sequence[str], data_identity: Any, *,
                    model_identity: str, model_dir: str | os.PathLike,
                    make_encoder: Callable[[], Any], fields: str = "title",
                    feature: str = "hist_items",
                    directory: str | os.PathLike | None = None) -> ItemText:
  """`ItemText` of `texts`, its arrays read from the cache when the key
  matches, else encoded and written (atomically).

  `make_encoder()` is called on a cache miss only and returns a
  `models.text.TextEncoder` (or anything with its `tokenize`, `bucket` and
  `encode_ids`) of the model whose identity is `model_identity` (the data
  layer imports no model code; `models.item_text.for_run` passes these).
  `directory`: the cache folder (default `cache_dir()`)."""
  texts = tuple(texts)
  key = cache_key(model_identity, data_identity, fields, texts)
  path = pathlib.Path(directory or cache_dir()) / f"{key[:24]}.npz"
  arrays = _read(path, key)
  if arrays is None:
    encoder = make_encoder()
    ids = encoder.tokenize(list(texts))
    width = encoder.bucket(max(len(x) for x in ids))
    token_ids = np.zeros((len(ids), width), np.int32)
    mask = np.zeros((len(ids), width), np.int32)
    for i, row in enumerate(ids):
      token_ids[i, :len(row)], mask[i, :len(row)] = row, 1
    vectors = np.asarray(encoder.encode_ids(ids), np.float32)
    if vectors.shape[0] != len(texts) or not np.isfinite(vectors).all():
      raise ValueError(f"the text encoder returned {vectors.shape} vectors "
                       f"(finite: {bool(np.isfinite(vectors).all())}) for "
                       f"{len(texts)} texts")
    arrays = {"token_ids": token_ids, "mask": mask, "vectors": vectors}
    _write_atomic(path, {**arrays, "key": np.array(key)})
  return ItemText(feature=feature, key=key, texts=texts,
                  token_ids=arrays["token_ids"], mask=arrays["mask"],
                  vectors=arrays["vectors"].astype(np.float32),
                  model_identity=model_identity, model_dir=str(model_dir))


def movielens_texts(data_cfg: dict, fields: str) -> tuple[str, ...]:
  """Per item id texts of the MovieLens source that `data_cfg` (the config's
  data section) reads."""
  from mtrec_jax.data import builders, movielens
  variant = movielens.normalize_variant(data_cfg.get("variant", "100k"))
  source = builders.resolve_source(data_cfg.get("data_dir"), f"ml-{variant}",
                                   "movielens")
  raw = movielens.read_movielens(
      source, variant, strict_counts=data_cfg.get("strict_counts", True))
  genre_ids = [np.flatnonzero(row).tolist() for row in raw.item_genres]
  return item_texts(raw.item_titles, genre_ids, raw.genre_names, fields)
