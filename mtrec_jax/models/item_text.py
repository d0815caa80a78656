"""Item text as an item representation: frozen features or a fine-tuned BERT.

Why: issue 18 asks whether a pre-trained language model's view of an item
(its MovieLens title through all-MiniLM-L6-v2, `models.text`) helps
multi-task recommendation, in particular for items with few interactions.

The item table of the item feature (``hist_items``, whose table
``cand_item`` and the next-item softmax share) becomes, by
``model.item_repr``:
  'id'       the learned id table alone (what every model did before);
  'text'     T = Dense(embed_dim)(text vectors) [V, embed_dim], no id table;
  'id+text'  the id table + T (a sum, so the width stays embed_dim).
Every reader of the table sees the same rows: the history input, the
candidate item of rating/like, and the next-item scores.

``model.text.mode``:
  'frozen'    the text vectors are the sentence embeddings computed once
              (`data.item_text`, cached with the prepared dataset); only the
              384 -> embed_dim projection learns.
  'finetune'  the vectors come from the BERT encoder run in the model on
              every item's cached token ids, its parameters under
              ``params['shared']['feature_encoder']['text_<feature>']['bert']``
              (so the weighting strategies see them as shared), initialised
              from the pre-trained weights; ``model.text.freeze_layers`` = N
              keeps the token embeddings and layers 0..N-1 as constants (no
              gradient, no optimizer state); ``optimizer.text_lr_scale``
              scales the BERT parameters' learning rate (`train.optim`).

Deliberate differences and costs of 'finetune':
* every forward encodes all V items (1,683 on ML-100K), because the
  all-positions next-item task scores every item with a full softmax and
  so needs every row of the table: encoding only a batch's items would mix
  fine-tuned rows with stale frozen ones.  The step cost of each mode
  relative to ids only: `benchmarks/text_encoder.py --steps`
  (benchmarks/results/text_encoder_steps_cpu.md); in params mode every
  task's gradient goes back through the trainable layers;
* no dropout inside BERT (deterministic), so the several reads of the table
  in one step (the history, each auxiliary task's pass, the softmax) are
  the same computation; XLA does not merge them, so the feature encoder
  computes the table once per application (`FeatureEncoder
  ._text_table_once`), and the frozen lower layers once at build time
  (`frozen_layer_states`);
* the word-embedding table is cut to the tokens the item texts use (same
  outputs: the other rows are never looked up), so a trainable table holds a
  few thousand rows instead of 30,522.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mtrec_jax.data.item_text import FIELDS, ItemText, build_item_text
from mtrec_jax.registry import unknown_name_message

ITEM_REPRS = ("id", "text", "id+text")
TEXT_MODES = ("frozen", "finetune")
# model.text's keys and defaults.
TEXT_DEFAULTS = {"mode": "frozen", "fields": "title", "freeze_layers": 0,
                 "model_dir": ""}


@dataclasses.dataclass(frozen=True, eq=False)
class Pretrained:
  """The BERT weights fine-tuning starts from, with the token vocabulary cut
  to `used_tokens` (hashable by `identity`, so a module can hold it)."""
  identity: str
  config: Any
  pooling: Any
  params: dict
  used_tokens: np.ndarray
  # The states after the frozen layers (`TextItems.freeze_layers` > 0), one
  # float32 array per `length_buckets` group: constants, run once here.
  frozen_states: tuple = ()

  def __hash__(self):
    return hash((self.identity, self.used_tokens.tobytes()))

  def __eq__(self, other):
    return (isinstance(other, Pretrained) and other.identity == self.identity
            and np.array_equal(other.used_tokens, self.used_tokens))


@dataclasses.dataclass(frozen=True)
class TextItems:
  """What the feature encoder needs to build the text part of an item
  table (see the module docstring); hashable."""
  text: ItemText
  item_repr: str = "id+text"
  mode: str = "frozen"
  freeze_layers: int = 0
  pretrained: Pretrained | None = None

  def __post_init__(self):
    check_choice("model.item_repr", self.item_repr, ITEM_REPRS)
    if self.item_repr == "id":
      raise ValueError("TextItems with item_repr='id': pass no text instead")
    check_choice("model.text.mode", self.mode, TEXT_MODES)
    if self.mode == "finetune":
      if self.pretrained is None:
        raise ValueError("model.text.mode='finetune' needs the pre-trained "
                         "weights (Pretrained)")
      layers = self.pretrained.config.num_hidden_layers
      if not 0 <= self.freeze_layers <= layers:
        raise ValueError(f"model.text.freeze_layers={self.freeze_layers}: the "
                         f"text model has {layers} layers; use 0..{layers}")
      pre = self.pretrained
      if self.freeze_layers and not pre.frozen_states:
        ids = np.searchsorted(pre.used_tokens, self.text.token_ids)
        object.__setattr__(self, "pretrained", dataclasses.replace(
            pre, frozen_states=frozen_layer_states(
                pre, ids, self.text.mask, self.freeze_layers)))

  @property
  def feature(self) -> str:
    return self.text.feature


def check_choice(key: str, value, choices) -> None:
  if value not in choices:
    raise ValueError(f"{key}: " + unknown_name_message(key.rsplit(".")[-1],
                                                       value, choices))


def compact_vocab(text: ItemText, params: dict) -> tuple[dict, np.ndarray,
                                                          np.ndarray]:
  """(params with word embeddings cut to the used tokens, token ids remapped
  to that cut table, the used token ids)."""
  used = np.unique(text.token_ids)
  remap = np.searchsorted(used, text.token_ids).astype(np.int32)
  emb = dict(params["embeddings"])
  emb["word_embeddings"] = {"embedding": np.asarray(
      params["embeddings"]["word_embeddings"]["embedding"])[used]}
  return {**params, "embeddings": emb}, remap, used


class ItemTextTable(nn.Module):
  """The text part T [V, embed_dim] of the item table (module docstring)."""
  items: TextItems
  embed_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self) -> jax.Array:
    it = self.items
    if it.mode == "frozen":
      vectors = jnp.asarray(it.text.vectors)
    else:
      vectors = self._finetuned()
    return nn.Dense(self.embed_dim, dtype=self.dtype, name="proj")(
        vectors.astype(self.dtype)).astype(jnp.float32)

  def _finetuned(self) -> jax.Array:
    from mtrec_jax.models.text.bert import SentenceEncoder
    pre, start = self.items.pretrained, self.items.freeze_layers
    frozen = frozen_names(start)
    trainable = self.param("bert", lambda _: jax.tree_util.tree_map(
        jnp.asarray, {k: v for k, v in pre.params.items()
                      if k not in frozen}))
    ids = np.searchsorted(pre.used_tokens, self.items.text.token_ids)
    mask = self.items.text.mask
    cfg = dataclasses.replace(pre.config, vocab_size=len(pre.used_tokens))
    encoder = SentenceEncoder(cfg, pre.pooling, dtype=self.dtype)
    parts, order = [], []
    for i, (w, rows) in enumerate(length_buckets(mask)):
      states = (jnp.asarray(pre.frozen_states[i], self.dtype) if start
                else None)  # the frozen layers' output: a constant
      parts.append(encoder.apply(
          {"params": {"bert": trainable}},
          jnp.asarray(ids[rows, :w], jnp.int32), jnp.asarray(mask[rows, :w]),
          deterministic=True, start=start, hidden=states))
      order.append(rows)
    inverse = np.argsort(np.concatenate(order))
    return jnp.concatenate(parts)[inverse]


def frozen_names(freeze_layers: int) -> list[str]:
  """The BERT parameter groups fine-tuning keeps frozen."""
  if not freeze_layers:
    return []
  return ["embeddings"] + [f"layer_{i}" for i in range(freeze_layers)]


def length_buckets(mask: np.ndarray) -> list[tuple[int, np.ndarray]]:
  """(width, rows) groups of the titles: one group per title length, each
  encoded at exactly its length, so no token of the trainable layers is
  padding: their cost is per token, and the power-of-two widths used
  before ran the padding of most titles through them too.  Padding never
  changes a row, as padded keys are masked, so the grouping changes only
  the work, not the function (up to float rounding)."""
  lengths = mask.sum(1)
  return [(int(w), np.flatnonzero(lengths == w))
          for w in sorted(set(lengths.tolist()))]


def frozen_layer_states(pre: Pretrained, token_ids: np.ndarray,
                        mask: np.ndarray, freeze_layers: int) -> tuple:
  """The states after the embeddings and the `freeze_layers` lower layers,
  per `length_buckets` group, float32.  These layers are frozen and run
  deterministically (no dropout), so their output is a constant of the
  training step: computed once here instead of in every step, the step
  runs only the trainable layers (the same function; rounding may differ
  in the last bits, as any change of XLA's fusion can)."""
  from mtrec_jax.models.text.bert import BertEncoder
  cfg = dataclasses.replace(pre.config, vocab_size=len(pre.used_tokens))
  params = {k: pre.params[k] for k in frozen_names(freeze_layers)}
  run = jax.jit(lambda p, i, m: BertEncoder(cfg).apply(
      {"params": p}, i, m, deterministic=True, stop=freeze_layers))
  return tuple(np.asarray(run(params, token_ids[rows, :w], mask[rows, :w]))
               for w, rows in length_buckets(mask))


def text_config(model_cfg) -> tuple[str, dict]:
  """(item_repr, model.text with defaults), checked: unknown keys and values
  name the closest valid ones."""
  from mtrec_jax.registry import closest
  cfg = model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(
      model_cfg)
  item_repr = cfg.get("item_repr", "id")
  check_choice("model.item_repr", item_repr, ITEM_REPRS)
  text = dict(cfg.get("text", {}) or {})
  for key in text:
    if key not in TEXT_DEFAULTS:
      close = closest(key, list(TEXT_DEFAULTS))
      hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
      raise ValueError(f"unknown model.text key {key!r}.{hint} Valid keys: "
                       f"{', '.join(TEXT_DEFAULTS)}.")
  text = {**TEXT_DEFAULTS, **text}
  check_choice("model.text.mode", text["mode"], TEXT_MODES)
  check_choice("model.text.fields", text["fields"], FIELDS)
  if int(text["freeze_layers"]) < 0:
    raise ValueError(f"model.text.freeze_layers={text['freeze_layers']} must "
                     "be >= 0 (0 = fine-tune every layer)")
  return item_repr, text


def text_items(text: ItemText, model_cfg, *, pretrained=None
               ) -> TextItems | None:
  """`TextItems` for the model config (None for item_repr 'id').

  `pretrained`: a loaded `models.text.PretrainedText` for 'finetune'
  (default: load the one at `text.model_dir`)."""
  item_repr, cfg = text_config(model_cfg)
  if item_repr == "id":
    return None
  pre = None
  if cfg["mode"] == "finetune":
    if pretrained is None:
      from mtrec_jax.models.text import load_pretrained
      pretrained = load_pretrained(text.model_dir)
    if pretrained.identity != text.model_identity:
      raise ValueError(f"the item texts were encoded with "
                       f"{text.model_identity[:24]}..., the weights to "
                       f"fine-tune are {pretrained.identity[:24]}...; use the "
                       "same model_dir for both")
    params, _, used = compact_vocab(text, pretrained.params)
    pre = Pretrained(pretrained.identity, pretrained.config,
                     pretrained.pooling, params, used)
  return TextItems(text, item_repr, cfg["mode"], int(cfg["freeze_layers"]),
                   pre)


def with_text_model(data_identity: dict | None, model_cfg) -> dict | None:
  """`data_identity` (a run's `data.identity`) with the text model the run
  reads: ``text_model`` its content hash (`models.text.model_identity`),
  ``hash`` over both; unchanged for item_repr 'id'.  A missing text model
  raises `TextModelNotFoundError` naming the fix."""
  import hashlib
  from mtrec_jax.models.text.weights import model_identity
  item_repr, cfg = text_config(model_cfg)
  if item_repr == "id":
    return data_identity
  text = model_identity(cfg["model_dir"] or None)
  out = dict(data_identity or {})
  out["text_model"] = text
  out["hash"] = hashlib.sha256(
      f"{out.get('hash') or ''}\0{text}".encode()).hexdigest()[:16]
  return out


def for_run(config, dataset) -> ItemText | None:
  """The run's `ItemText`: MovieLens texts, encoded once and cached with
  the prepared dataset (`data.item_text`); None when ``model.item_repr`` is
  'id'.  A missing text model raises `TextModelNotFoundError` naming the
  fix (`models.text.weights.INSTALL_HINT`)."""
  from mtrec_jax.data import identity as identity_lib
  from mtrec_jax.data.item_text import cache_dir, movielens_texts
  from mtrec_jax.models.text import (TextEncoder, load_pretrained,
                                     locate_model_dir, model_identity)
  item_repr, cfg = text_config(config.model)
  if item_repr == "id":
    return None
  data = config.data.to_dict() if hasattr(config.data, "to_dict") else dict(
      config.data)
  if data.get("name") != "movielens":
    raise ValueError(f"model.item_repr={item_repr!r} needs item texts, which "
                     f"only the 'movielens' dataset has (data.name is "
                     f"{data.get('name')!r}); set model.item_repr='id'")
  model_dir = locate_model_dir(cfg["model_dir"] or None)  # fails first
  texts = movielens_texts(data, cfg["fields"])
  vocab = next(f.vocab_size for f in dataset.features
               if f.name == "hist_items")
  if len(texts) != vocab:
    raise ValueError(f"{len(texts)} item texts for an item vocabulary of "
                     f"{vocab}; the dataset and its source disagree")
  return build_item_text(
      texts, identity_lib.identity(config), fields=cfg["fields"],
      feature="hist_items", model_identity=model_identity(model_dir),
      model_dir=model_dir,
      make_encoder=lambda: TextEncoder(load_pretrained(model_dir)),
      directory=cache_dir(data.get("tfds_dir")))
