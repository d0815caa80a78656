"""Auxiliary tasks computed from the shared encoder, not from a task tower.

Self-supervised and knowledge tasks read the model's internals (per-position
encoder outputs, the item embedding table) and draw randomness every step,
so they are not `TaskSpec` heads on the [K, B, H] representation.  Each
`AuxTask` is a frozen spec with

* ``head_spec()``: which private Flax head the task trains, as a `HeadSpec`
  (a name in `models.aux_heads.AUX_HEADS` and its arguments), or None; the
  model builds it, its parameters live under ``params['aux'][name]`` and get
  only this task's gradient, like a tower;
* ``loss(encoder, head, batch, key, train)``: a scalar loss, given the bound
  `FeatureEncoder` (shared), the bound head and a PRNG key.

`MultiTaskModel.aux_losses` returns the [A] vector of them; the train step
appends it to the K task losses, so every weighting strategy sees K + A
tasks (in ``params`` gradient mode; ``rep`` mode needs every task to read the
shared representation and refuses auxiliary tasks).

Tasks (config ``aux.tasks``; builders in `AUX_TASKS`):
  ``next_all`` all-positions next-item prediction (SASRec, Kang & McAuley
          2018), evaluated with the next-item ranking metrics,
  ``rating_all``, ``like_all``, ``genre_all``  the dataset's rating, like
          and genre tasks asked at every position about the item that
          follows it (`NextInteractionTask`), evaluated like those tasks,
  ``mim`` masked item modelling (BERT4Rec's Cloze task, Sun et al. 2019),
  ``cl``  sequence contrastive learning (CL4SRec, Xie et al. 2022),
  ``kg``  item-attribute knowledge-graph completion (MKR, Wang et al. 2019).

With ``aux.next_all.shared_pass`` (off by default: what every stored run
computed) the tasks that read the unmasked sequence
(`reads_unmasked_sequence`: next_all and the `NextInteractionTask`s) share
ONE encoder pass per step (`task_encoders`) instead of each encoding the
sequence again.  Without
dropout (evaluation, or dropout rates 0) the losses and every task's
gradient are those of separate passes up to float rounding; in training
with dropout the sharing tasks see the same dropout masks (the first
sharing task's, drawn as its own pass drew them before), where separate
passes drew independent masks: each task's loss has the same distribution,
the tasks' noise is now correlated, as in a multi-task model whose towers
read one shared forward pass.  A different random stream, so a different
run: opt-in.

Held-out items (a cold-start split, `data.movielens.COLD_START_RULE`):
the item-scoring losses (next_all's softmax, sampled softmax and bce
negatives, mim's softmax) never score the dataset's
``info['cold_start']['items']`` in training, as they never score the
padding item, so their id rows and head biases are not trained as every
position's negative and stay at their initial values; evaluation still
ranks them (`scores`).  Without the split these losses are unchanged.

This module is the task logic (specs, targets, losses, evaluation scores,
builders, the ``aux`` config section) and imports no Flax: the heads are
modules of `mtrec_jax.models.aux_heads`, which the losses receive bound.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mtrec_jax import config as config_lib
from mtrec_jax.registry import CONFIG_SECTIONS, Registry
from mtrec_jax.tasks import catalogue_softmax, knowledge, sequence_ssl

AUX_TASKS: Registry = Registry("auxiliary task")
NEXT_ALL_LOSSES = ("softmax", "sampled_softmax", "bce")
# next_all's output layer: BERT4Rec's `ItemPredictionHead`
# (`models.aux_heads`), or SASRec's raw
# dot product of the encoder output with the item table.
NEXT_ALL_HEADS = ("mlp", "dot")
# Where bce's negative comes from: uniform over the catalogue but the target,
# or (SASRec's sampler) uniform over the items the user has not interacted
# with in training.
NEXT_ALL_NEGATIVES = ("uniform", "unseen")
# How the full softmax is computed: 'full' materialises the [B, L, V]
# logits (what every stored run used), 'fused' is
# `catalogue_softmax.catalogue_softmax_loss` (the same loss and gradient up
# to float rounding, several times faster on CPU).
NEXT_ALL_SOFTMAX_IMPLS = ("full", "fused")
# Negatives per step of next_all's sampled softmax
# (`aux.next_all.num_negatives`).
SAMPLED_NEGATIVES = 100


def held_out_items(dataset) -> tuple[int, ...]:
  """The cold-start split's held-out item ids (``info['cold_start']
  ['items']``, `data.movielens`), () without the split."""
  info = getattr(dataset, "info", None) or {}
  return tuple(int(i) for i in (info.get("cold_start") or {}).get("items",
                                                                 ()))


def block_items(logits: jax.Array, items: tuple[int, ...]) -> jax.Array:
  """`logits` [..., V] with item 0 (padding) and `items` set to -1e9: never
  an answer, no gradient through those columns."""
  logits = logits.at[..., 0].set(-1e9)
  if items:
    logits = logits.at[..., np.asarray(items)].set(-1e9)
  return logits


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  """An auxiliary task's private head: `kind` names a Flax module in
  `models.aux_heads.AUX_HEADS`, built as ``module(**kwargs, name=...)``."""
  kind: str
  kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class AuxTask(abc.ABC):
  """Base of the auxiliary task specs: a name and the sequence feature whose
  items (and item table) the task works on.  Subclasses define `loss`;
  those with an `eval_task` also define ``scores(encoder, head, batch) ->
  [B, V]``, the evaluation scores its metrics rank."""
  name: str
  feature: str = "hist_items"

  @property
  def needs_mask_token(self) -> bool:
    """Whether the feature encoder needs a learned [mask] vector."""
    return False

  @property
  def needs_causal_encoder(self) -> bool:
    """Whether the task is only sound with causal attention (each position
    must not see the item it predicts)."""
    return False

  @property
  def reads_unmasked_sequence(self) -> bool:
    """Whether `loss` encodes only ``batch[feature]`` as it is (no mask, no
    augmentation): such tasks may share one encoder pass (`task_encoders`)."""
    return False

  @property
  def eval_task(self):
    """A `TaskSpec` whose metrics evaluate `scores` (e.g. next-item
    ranking), or None: the task then reports only its loss."""
    return None

  def head_spec(self) -> HeadSpec | None:
    """The task's private Flax head, as a `models.aux_heads` name and its
    arguments, or None (no private parameters)."""
    return None

  @abc.abstractmethod
  def loss(self, encoder, head: Callable | None, batch: Mapping[str, Any],
           key: jax.Array, train: bool) -> jax.Array:
    """The scalar loss of a batch; `key` draws masks, views or queries."""


@dataclasses.dataclass(frozen=True)
class MaskedItemTask(AuxTask):
  """Masked item modelling, BERT4Rec's Cloze objective (Sun et al., CIKM
  2019): hide random history items behind a learned [mask] vector and
  predict each hidden id from the bidirectional encoding, softmax over the
  whole catalogue (padding id 0 excluded).  Default mask_prob 0.2, the
  authors' setting for ML-1M (`sequence_ssl.CLOZE_MASK_PROB`).  The loss is
  the mean cross-entropy over masked positions (mean-like scale)."""
  mask_prob: float = sequence_ssl.CLOZE_MASK_PROB
  embed_dim: int = 0
  num_items: int = 0
  # Items the softmax leaves out in training (`held_out_items`).
  held_out: tuple[int, ...] = ()

  @property
  def needs_mask_token(self) -> bool:
    return True

  def head_spec(self) -> HeadSpec:
    return HeadSpec("item_prediction", {"embed_dim": self.embed_dim,
                                        "num_items": self.num_items})

  def loss(self, encoder, head, batch, key, train):
    ids = jnp.asarray(batch[self.feature])
    masked = sequence_ssl.cloze_mask(key, ids, self.mask_prob)
    h, _ = encoder.encode_positions(self.feature, ids, train=train,
                                    masked=masked)
    h = h[:, :ids.shape[1]]  # drop a 'cls' token
    logits = head(h, encoder.embedding_table(self.feature))
    logits = block_items(logits, self.held_out)  # never an answer
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, ids)
    weight = masked.astype(jnp.float32)
    return jnp.sum(ce * weight) / jnp.maximum(jnp.sum(weight), 1.0)


@dataclasses.dataclass(frozen=True, eq=False)
class NextItemSequenceTask(AuxTask):
  """All-positions next-item prediction, SASRec's objective (Kang & McAuley,
  ICDM 2018): with CAUSAL attention, every position of the history predicts
  the item that follows it (`seq_targets`), scored against the shared item
  table.  Trained with the full softmax cross-entropy over the catalogue
  (as Klenitskiy & Vasilev, RecSys 2023, show works better than SASRec's
  original binary loss with one sampled negative), averaged over real
  positions (mean-like scale).  ``loss='bce'`` is SASRec's original: per
  position, binary cross-entropy of the target against one sampled item
  (the mean over real positions of the positive's term plus the mean of
  the negative's, as the reference's two `BCEWithLogitsLoss` calls).  With
  ``negatives='uniform'`` (the default) the negative is uniform over the
  rest of the catalogue; with ``negatives='unseen'`` it is uniform over
  the items the user has not interacted with in training, redrawn every
  step at every position, as the reference's `WarpSampler`
  (pmixer/SASRec.pytorch `utils.py`: `random_neq(1, itemnum + 1,
  set(user_train[u]))`); the user's training items are `seen_items`, read
  from the validation rows' `exclude` column (the whole training history,
  not just the window), and exact rejection sampling draws on device.
  Only the two scored items are gathered ([B, L, E] work instead of the
  [B, L, V] logits), with the same value and gradient as reading them off
  the full logits.
  ``loss='sampled_softmax'`` is for large catalogues (Bengio & Senecal
  2008; Jean et al., ACL 2015): per step, `num_negatives` items drawn
  uniformly with replacement (ids 1..V-1) and shared by every position; each
  position's softmax runs over its target and those items, a sampled item
  equal to the target being dropped (TensorFlow's remove_accidental_hits).
  The proposal is uniform, so the log Q correction is the same constant for
  every candidate and cancels.  Cost O(B L S E) instead of O(B L V E).
  Each training row then yields up to L targets for one encoder pass; on
  `train_examples='sequences'` data each (user, position) target is counted
  once, as in SASRec.  Evaluated like
  the dataset's next-item task from the last position's scores.

  The output layer (``head``) is `models.aux_heads.ItemPredictionHead`
  ('mlp', the default: the extra Dense+GELU+LayerNorm and bias are
  BERT4Rec's and also map a hidden width to the embedding width) or
  SASRec's 'dot': the raw encoder output against the shared item table, no
  bias (needs hidden width == embedding width).

  ``held_out``: items no training loss scores (a cold-start split's, see
  the module doc): the softmaxes give them -1e9 like the padding item,
  sampled negatives equal to one are dropped like accidental hits, and
  bce's samplers redraw them."""
  targets: str = "seq_targets"
  loss_kind: str = "softmax"
  embed_dim: int = 0
  num_items: int = 0
  next_item_task: Any = None
  num_negatives: int = SAMPLED_NEGATIVES
  head_kind: str = "mlp"
  negatives: str = "uniform"
  # [num_users + 1, num_items] bool, True where the user (row = user id)
  # interacted with the item in training, and in column 0; for 'unseen'.
  seen_items: np.ndarray | None = None
  user_feature: str = "user"
  softmax_impl: str = "full"
  # Share one encoder pass with the other unmasked-sequence tasks
  # (`aux.next_all.shared_pass`, `task_encoders`).
  shared_pass: bool = False
  held_out: tuple[int, ...] = ()

  def __post_init__(self):
    if self.softmax_impl not in NEXT_ALL_SOFTMAX_IMPLS:
      raise ValueError(f"next_all: softmax_impl must be one of "
                       f"{NEXT_ALL_SOFTMAX_IMPLS}, got {self.softmax_impl!r}")
    if self.loss_kind not in NEXT_ALL_LOSSES:
      raise ValueError(f"next_all: loss must be one of {NEXT_ALL_LOSSES}, "
                       f"got {self.loss_kind!r}")
    if isinstance(self.num_negatives, bool) or not isinstance(
        self.num_negatives, int) or self.num_negatives < 1:
      raise ValueError(f"next_all: num_negatives must be an int >= 1, got "
                       f"{self.num_negatives!r}")
    if self.head_kind not in NEXT_ALL_HEADS:
      raise ValueError(f"next_all: head must be one of {NEXT_ALL_HEADS}, got "
                       f"{self.head_kind!r}")
    if self.negatives not in NEXT_ALL_NEGATIVES:
      raise ValueError(f"next_all: negatives must be one of "
                       f"{NEXT_ALL_NEGATIVES}, got {self.negatives!r}")
    if self.negatives == "unseen":
      if self.loss_kind != "bce":
        raise ValueError(f"next_all: negatives='unseen' is the bce loss's "
                         f"sampler; loss is {self.loss_kind!r} (use "
                         f"negatives='uniform')")
      seen = self.seen_items
      if seen is None or seen.ndim != 2 or seen.shape[1] != self.num_items:
        raise ValueError(f"next_all: negatives='unseen' needs seen_items "
                         f"[num_users + 1, {self.num_items}] (each user's "
                         f"training items), got "
                         f"{None if seen is None else seen.shape}")
      if not seen[:, 0].all() or self.excluded_negatives().all(axis=1).any():
        raise ValueError("next_all: seen_items must mark the padding id 0 "
                         "as seen and leave every user an item that is "
                         "neither seen nor held out")
    if any(not 0 < int(i) < self.num_items for i in self.held_out):
      raise ValueError(f"next_all: held_out must be item ids in "
                       f"[1, {self.num_items}), got {self.held_out}")
    if len(set(self.held_out)) > self.num_items - 3:
      # bce's sampler needs an item other than the target to draw.
      raise ValueError(f"next_all: held_out leaves fewer than 2 of the "
                       f"{self.num_items - 1} items to train on")

  def excluded_negatives(self) -> np.ndarray:
    """[num_users + 1, V] bool, True where bce's 'unseen' sampler must not
    draw: each user's training items and the padding id (`seen_items`),
    and the held-out items."""
    seen = self.seen_items
    if self.held_out:
      seen = seen.copy()
      seen[:, list(self.held_out)] = True
    return seen

  @property
  def needs_causal_encoder(self) -> bool:
    return True

  @property
  def reads_unmasked_sequence(self) -> bool:
    return True

  @property
  def eval_task(self):
    if self.next_item_task is None:
      return None
    return dataclasses.replace(self.next_item_task, name=self.name)

  def head_spec(self) -> HeadSpec | None:
    if self.head_kind == "dot":
      return None
    return HeadSpec("item_prediction", {"embed_dim": self.embed_dim,
                                        "num_items": self.num_items})

  def _hidden(self, encoder, ids, train):
    h, _ = encoder.encode_positions(self.feature, ids, train=train)
    return h[:, :ids.shape[1]]

  def _score(self, head, h, table, items=None):
    """`ItemPredictionHead`'s contract for either head: `items` None ->
    [..., V], [S] -> [..., S], shaped like h[..., 0] -> one per position."""
    if self.head_kind == "mlp":
      return head(h, table, items)
    h = h.astype(jnp.promote_types(h.dtype, jnp.float32))  # bf16 -> f32
    if items is None:
      return h @ table.T
    if items.ndim == 1:
      return h @ table[items].T
    return jnp.sum(h * table[items], axis=-1)

  def _logits(self, encoder, head, ids, train):
    logits = self._score(head, self._hidden(encoder, ids, train),
                         encoder.embedding_table(self.feature))
    return block_items(logits, self.held_out)  # never an answer

  def loss(self, encoder, head, batch, key, train):
    ids = jnp.asarray(batch[self.feature])
    targets = jnp.asarray(batch[self.targets])
    if self.loss_kind == "sampled_softmax":
      per_position = self._sampled_softmax(encoder, head, ids, targets, key,
                                           train)
    elif self.loss_kind == "softmax" and self.softmax_impl == "fused":
      return self._fused_softmax(encoder, head, ids, targets, train)
    elif self.loss_kind == "softmax":
      per_position = optax.softmax_cross_entropy_with_integer_labels(
          self._logits(encoder, head, ids, train), targets)
    else:  # SASRec's original: the target against one sampled item
      negatives = self.bce_negatives(key, targets, batch)
      h = self._hidden(encoder, ids, train)
      table = encoder.embedding_table(self.feature)
      pos = self._score(head, h, table, targets)
      neg = self._score(head, h, table, negatives)
      per_position = (optax.sigmoid_binary_cross_entropy(pos, 1.0)
                      + optax.sigmoid_binary_cross_entropy(neg, 0.0))
    weight = ((targets != 0) & (ids != 0)).astype(jnp.float32)
    return jnp.sum(per_position * weight) / jnp.maximum(jnp.sum(weight), 1.0)

  def _fused_softmax(self, encoder, head, ids, targets, train):
    """The 'softmax' loss by `catalogue_softmax_loss`: no [B, L, V] logits,
    padded positions never scored; equal to the 'full' one up to float
    rounding."""
    h = self._hidden(encoder, ids, train)
    table = encoder.embedding_table(self.feature)
    if self.head_kind == "mlp":
      x, bias = head(h, table, vectors=True)
    else:
      x, bias = h.astype(jnp.promote_types(h.dtype, jnp.float32)), None
    weight = ((targets != 0) & (ids != 0)).astype(jnp.float32)
    total = catalogue_softmax.catalogue_softmax_loss(
        x.reshape(-1, x.shape[-1]), table, targets.reshape(-1),
        weight.reshape(-1), bias, excluded_items=self.held_out)
    return total / jnp.maximum(jnp.sum(weight), 1.0)

  def bce_negatives(self, key: jax.Array, targets: jax.Array,
                    batch: Mapping[str, Any]) -> jax.Array:
    """[B, L] negative item ids of the bce loss, one per position."""
    vocab = self.num_items
    if self.negatives == "uniform" and not self.held_out:
      # Any item but the target.
      shift = jax.random.randint(key, targets.shape, 1, vocab - 1)
      return 1 + (jnp.maximum(targets, 1) - 1 + shift) % (vocab - 1)
    if self.negatives == "uniform":  # any item but the target and held_out
      blocked = np.zeros(vocab, bool)
      blocked[list(self.held_out)] = True
      blocked = jnp.asarray(blocked)
      return self._redraw(key, targets.shape,
                          lambda items: blocked[items] | (items == targets))
    if self.user_feature not in batch:
      raise KeyError(f"next_all: negatives='unseen' needs the batch column "
                     f"{self.user_feature!r} (user ids); batch keys: "
                     f"{sorted(batch)}")
    seen = jnp.asarray(self.excluded_negatives())  # held-out items: never drawn
    users = jnp.asarray(batch[self.user_feature]).astype(jnp.int32)[:, None]
    users = jnp.broadcast_to(users, targets.shape)
    return self._redraw(key, targets.shape,
                        lambda items: seen[users, items])

  def _redraw(self, key: jax.Array, shape, rejected) -> jax.Array:
    """Rejection sampling: ids uniform over 1..V-1, every position whose
    draw is `rejected` redrawn until none is; each accepted draw is uniform
    over the ids its position accepts."""
    vocab = self.num_items

    def body(carry):
      items, k = carry
      k, sub = jax.random.split(k)
      fresh = jax.random.randint(sub, shape, 1, vocab)
      return jnp.where(rejected(items), fresh, items), k

    key, sub = jax.random.split(key)
    first = jax.random.randint(sub, shape, 1, vocab)
    items, _ = jax.lax.while_loop(lambda c: jnp.any(rejected(c[0])), body,
                                  (first, key))
    return items

  def sampled_negatives(self, key: jax.Array) -> jax.Array:
    """The [num_negatives] item ids one step's sampled softmax shares."""
    return jax.random.randint(key, (self.num_negatives,), 1, self.num_items)

  def _sampled_softmax(self, encoder, head, ids, targets, key, train):
    h = self._hidden(encoder, ids, train)
    table = encoder.embedding_table(self.feature)
    negatives = self.sampled_negatives(key)
    positive = self._score(head, h, table, targets)  # [B, L]
    sampled = self._score(head, h, table, negatives)  # [B, L, S]
    hit = negatives == targets[..., None]
    if self.held_out:  # a held-out item is dropped like an accidental hit
      hit = hit | jnp.isin(negatives, jnp.asarray(self.held_out))
    sampled = jnp.where(hit, -1e9, sampled)
    logits = jnp.concatenate([positive[..., None], sampled], axis=-1)
    return -jax.nn.log_softmax(logits, axis=-1)[..., 0]

  def scores(self, encoder, head, batch):
    """[B, V] logits at the last position (the most recent item); only
    that position is scored (the heads act position by position)."""
    ids = jnp.asarray(batch[self.feature])
    h = self._hidden(encoder, ids, False)[:, -1]
    logits = self._score(head, h, encoder.embedding_table(self.feature))
    return logits.at[..., 0].set(-1e9)  # padding is never an answer


# What `NextInteractionTask` predicts about the interaction with the next item.
NEXT_INTERACTION_LABELS = ("rating", "like", "genre")


@dataclasses.dataclass(frozen=True, eq=False)
class NextInteractionTask(AuxTask):
  """A per-target dataset task (rating, like or genre of the next item)
  trained at every position of the sequence, the all-positions counterpart
  of that task as `next_all` is of next-item prediction.  With CAUSAL
  attention, position t's output h_t (which has seen items <= t, never
  their successors) predicts a property of the interaction with
  ``seq_targets[t]``, the item that follows:

  * ``rating``: its stars (regression), from h_t and the item's embedding,
  * ``like``: stars >= `like_threshold` (binary), from h_t and the item,
  * ``genre``: the item's genres (multi-label), from h_t alone.

  rating and like read the next item as a candidate input, as the dataset's
  towers read ``cand_item``; genre must not (the item is its answer).  The
  per-position labels come from the sequence itself: the rating of
  ``seq_targets[t]`` is ``hist_ratings[t + 1]`` for t < L - 1 and the
  row's `target_task` label at t = L - 1 (``seq_targets[L-1]`` is the row's
  target item); genres come from the item metadata.  The head is a task
  tower (`model.tower_hidden`, `model.dropout`) applied at each position; the
  loss is `target_task`'s per-example loss averaged over real positions
  (mean-like scale, the dataset task's convention).  Evaluated with
  `target_task`'s metrics on the last position, i.e. on the row's own
  target: the same labels and metrics as the per-target task."""
  target_task: Any = None  # the dataset `TaskSpec` it mirrors
  label_kind: str = "rating"
  targets: str = "seq_targets"
  ratings: str = "hist_ratings"
  last_rating: str = "rating"
  like_threshold: float = 4.0
  item_genres: np.ndarray | None = None  # [V, G] 0/1, for 'genre'
  hidden: tuple[int, ...] = ()
  dropout_rate: float = 0.0
  shared_pass: bool = False  # as NextItemSequenceTask's

  def __post_init__(self):
    if self.label_kind not in NEXT_INTERACTION_LABELS:
      raise ValueError(f"{self.name}: label_kind must be one of "
                       f"{NEXT_INTERACTION_LABELS}, got {self.label_kind!r}")
    if self.label_kind == "genre" and self.item_genres is None:
      raise ValueError(f"{self.name}: genre labels need item_genres")

  @property
  def reads_candidate(self) -> bool:
    return self.label_kind != "genre"

  @property
  def needs_causal_encoder(self) -> bool:
    return True

  @property
  def reads_unmasked_sequence(self) -> bool:
    return True

  @property
  def eval_task(self):
    return dataclasses.replace(self.target_task, name=self.name)

  def head_spec(self) -> HeadSpec:
    return HeadSpec("position_tower", {
        "hidden": tuple(self.hidden), "out_dim": self.target_task.out_dim,
        "dropout_rate": self.dropout_rate})

  def position_labels(self, batch) -> jax.Array:
    """[B, L] (rating, like) or [B, L, G] (genre) labels of the interaction
    with each position's next item; junk where ``seq_targets`` is 0."""
    targets = jnp.asarray(batch[self.targets])
    if self.label_kind == "genre":
      return jnp.asarray(self.item_genres, jnp.float32)[targets]
    ratings = jnp.asarray(batch[self.ratings], jnp.float32)
    last = jnp.asarray(batch[self.last_rating], jnp.float32)[:, None]
    stars = jnp.concatenate([ratings[:, 1:], last], axis=1)
    if self.label_kind == "like":
      return (stars >= self.like_threshold).astype(jnp.float32)
    return stars

  def _outputs(self, encoder, head, batch, train):
    ids = jnp.asarray(batch[self.feature])
    h, _ = encoder.encode_positions(self.feature, ids, train=train)
    h = h[:, :ids.shape[1]]
    candidate = None
    if self.reads_candidate:
      candidate = encoder.embed_ids(self.feature, batch[self.targets])
    return head(h, candidate, train=train)

  def loss(self, encoder, head, batch, key, train):
    del key
    ids = jnp.asarray(batch[self.feature])
    targets = jnp.asarray(batch[self.targets])
    out = self._outputs(encoder, head, batch, train)  # [B, L, out]
    labels = self.position_labels(batch)
    b, length = ids.shape
    spec = dataclasses.replace(self.target_task, mask=None)
    per_position = spec.per_example_loss(
        out.reshape(b * length, -1),
        {spec.label: labels.reshape((b * length,) + labels.shape[2:])})
    weight = ((targets != 0) & (ids != 0)).astype(jnp.float32).reshape(-1)
    return jnp.sum(per_position * weight) / jnp.maximum(jnp.sum(weight), 1.0)

  def scores(self, encoder, head, batch):
    """[B, out_dim] outputs at the last position (about the row's target)."""
    return self._outputs(encoder, head, batch, False)[:, -1]


@dataclasses.dataclass(frozen=True)
class ContrastiveTask(AuxTask):
  """CL4SRec's sequence contrastive task (Xie et al., ICDE 2022): two random
  augmentations (crop / mask / reorder, one per row per view) of each
  history, pooled by the model's encoder, pulled together by NT-Xent against
  the batch's other views.  Defaults: the paper's dot-product similarity
  with no temperature (1.0) and ratios eta 0.6, gamma 0.3, beta 0.6 (see
  `sequence_ssl`); rows with an empty history are left out."""
  eta: float = sequence_ssl.CROP_ETA
  gamma: float = sequence_ssl.MASK_GAMMA
  beta: float = sequence_ssl.REORDER_BETA
  temperature: float = sequence_ssl.INFO_NCE_TEMPERATURE
  similarity: str = sequence_ssl.INFO_NCE_SIMILARITY

  @property
  def needs_mask_token(self) -> bool:
    return True

  def loss(self, encoder, head, batch, key, train):
    del head
    ids = jnp.asarray(batch[self.feature])
    views = []
    for view_key in jax.random.split(key, 2):
      aug_ids, aug_mask = sequence_ssl.augment(view_key, ids, self.eta,
                                               self.gamma, self.beta)
      h, real = encoder.encode_positions(self.feature, aug_ids, train=train,
                                         masked=aug_mask)
      views.append(encoder.pool(h, real).astype(jnp.float32))
    return sequence_ssl.info_nce(views[0], views[1], self.temperature,
                                 similarity=self.similarity,
                                 valid=jnp.any(ids != 0, axis=1))


@dataclasses.dataclass(frozen=True, eq=False)
class KnowledgeTask(AuxTask):
  """MKR-style knowledge-graph completion (Wang et al., WWW 2019) on
  item-attribute triples (genres, release decade): a batch of (item,
  relation) queries drawn uniformly from the graph each step, the head
  vector being the SHARED item embedding (the link to the recommender),
  tails scored by `models.aux_heads.KGScorer` and trained with
  `knowledge.kg_loss` (softmax within the relation).  Independent of the user batch."""
  graph: knowledge.KnowledgeGraph | None = None
  batch_items: int = 256
  dim: int = 32
  hidden: tuple[int, ...] = ()

  def head_spec(self) -> HeadSpec:
    return HeadSpec("kg_scorer", {
        "num_relations": self.graph.num_relations,
        "num_entities": self.graph.num_entities, "dim": self.dim,
        "hidden": tuple(self.hidden)})

  def loss(self, encoder, head, batch, key, train):
    del batch, train
    items, relations = self.graph.query_pairs()
    pick = jax.random.randint(key, (self.batch_items,), 0, items.size)
    item_ids = jnp.asarray(items)[pick]
    rel_ids = jnp.asarray(relations)[pick]
    heads = encoder.embed_ids(self.feature, item_ids).astype(jnp.float32)
    logits = head(heads, rel_ids)
    rows = jnp.asarray(self.graph.item_entities)[item_ids]
    return knowledge.kg_loss(logits, rows, rel_ids,
                             jnp.asarray(self.graph.entity_relation))


class SharedEncoding:
  """The bound `FeatureEncoder` as the sharing tasks see it: the first
  unmasked ``encode_positions(feature, ids, train=...)`` request runs the
  encoder (drawing its dropout masks as that task's own pass did), later
  requests for the same feature and mode get the same outputs; masked or
  augmented requests, and every other method, go to the encoder.  Handed
  only to tasks whose `reads_unmasked_sequence` is True, which encode
  exactly ``batch[feature]``."""

  def __init__(self, encoder):
    self._encoder = encoder
    self._cache: dict[tuple[str, bool], tuple[jax.Array, jax.Array]] = {}

  def encode_positions(self, name: str, ids: jax.Array, *,
                       train: bool = False, masked: jax.Array | None = None):
    if masked is not None:
      return self._encoder.encode_positions(name, ids, train=train,
                                            masked=masked)
    key = (name, bool(train))
    if key not in self._cache:
      self._cache[key] = self._encoder.encode_positions(name, ids,
                                                        train=train)
    h, real = self._cache[key]
    if real.shape[0] != jnp.shape(ids)[0]:
      raise ValueError(f"shared encoder pass of {name!r}: encoded a batch "
                       f"of {real.shape[0]} rows, asked for "
                       f"{jnp.shape(ids)[0]}")
    return h, real

  def __getattr__(self, attr):
    return getattr(self._encoder, attr)


def task_encoders(tasks, encoder) -> list:
  """The encoder each task's `loss` gets, in task order: one
  `SharedEncoding` for every task with ``shared_pass`` set (one pass per
  step and feature), the plain `encoder` for the others."""
  shared = SharedEncoding(encoder)
  return [shared if getattr(t, "shared_pass", False) else encoder
          for t in tasks]


# ----------------------------------------------------------------------------
# Builders: (config section, dataset, model config) -> AuxTask.  The config
# section holds the task's hyper-parameters (`aux.<name>.*`); tasks without
# one (the `NextInteractionTask`s) get {} and size their towers like the
# dataset tasks' (`model.tower_hidden`, `model.dropout`).


def _feature_spec(dataset, name: str):
  for spec in dataset.features:
    if spec.name == name:
      if spec.kind != "sequence":
        raise ValueError(f"auxiliary tasks need a sequence feature; "
                         f"{name!r} is {spec.kind}")
      return spec
  seqs = [s.name for s in dataset.features if s.kind == "sequence"]
  raise ValueError(f"dataset {dataset.name!r} has no sequence feature "
                   f"{name!r}; its sequence features: {seqs or 'none'}")


@AUX_TASKS.register("mim")
def masked_items(cfg: Mapping[str, Any], dataset,
                 model_cfg=None) -> MaskedItemTask:
  spec = _feature_spec(dataset, cfg["feature"])
  return MaskedItemTask("mim", cfg["feature"], float(cfg["mask_prob"]),
                        embed_dim=spec.embed_dim, num_items=spec.num_rows,
                        held_out=held_out_items(dataset))


@AUX_TASKS.register("next_all")
def next_item_sequence(cfg: Mapping[str, Any], dataset,
                       model_cfg=None) -> NextItemSequenceTask:
  spec = _feature_spec(dataset, cfg["feature"])
  columns = dataset.splits["train"]
  if cfg["targets"] not in columns:
    raise ValueError(f"next_all needs the column {cfg['targets']!r} of "
                     f"per-position next items; {dataset.name!r} has "
                     f"{sorted(columns)}")
  next_item = next((t for t in dataset.tasks
                    if t.head == "multiclass" and t.label == "target_item"),
                   None)
  head_kind = str(cfg.get("head", "mlp"))
  if head_kind == "dot" and model_cfg:
    hidden = dict(model_cfg.get("encoder", {})).get("hidden_dim")
    if hidden is not None and hidden != spec.embed_dim:
      raise ValueError(f"next_all: head='dot' scores the encoder output "
                       f"against the item table, so model.encoder."
                       f"hidden_dim ({hidden}) must equal the item "
                       f"embedding width ({spec.embed_dim}); or use "
                       f"head='mlp'")
  negatives = str(cfg.get("negatives", "uniform"))
  seen = None
  if negatives == "unseen":
    seen = training_items(dataset, cfg["feature"], spec.num_rows)
  return NextItemSequenceTask(
      "next_all", cfg["feature"], cfg["targets"], loss_kind=str(cfg["loss"]),
      embed_dim=spec.embed_dim, num_items=spec.num_rows,
      next_item_task=next_item,
      num_negatives=cfg.get("num_negatives", SAMPLED_NEGATIVES),
      head_kind=head_kind, negatives=negatives, seen_items=seen,
      softmax_impl=str(cfg.get("softmax_impl", "full")),
      held_out=held_out_items(dataset))


def training_items(dataset, feature: str, num_items: int,
                   user_column: str = "user", split: str = "val"
                   ) -> np.ndarray:
  """[max user id + 1, num_items] bool: the items each user interacted with
  in training, read from `split`'s `exclude` column (for a leave-last-out
  split, the validation row's exclusion list IS the whole training
  history, beyond the `feature` window), with column 0 (padding) set."""
  rows = dataset.splits.get(split, {})
  missing = [c for c in (user_column, "exclude") if c not in rows]
  if missing:
    raise ValueError(f"next_all: negatives='unseen' reads each user's "
                     f"training items from the {split!r} split's columns "
                     f"{missing}, which {dataset.name!r} lacks; use "
                     f"negatives='uniform'")
  users = np.asarray(rows[user_column]).astype(np.int64)
  exclude = np.asarray(rows["exclude"]).astype(np.int64)
  if exclude.size and (exclude.min() < 0 or exclude.max() >= num_items):
    raise ValueError(f"next_all: {split!r} exclude ids must lie in "
                     f"[0, {num_items}) (feature {feature!r})")
  seen = np.zeros((int(users.max(initial=0)) + 1, num_items), bool)
  seen[np.repeat(users, exclude.shape[1]), exclude.reshape(-1)] = True
  seen[:, 0] = True
  return seen


@AUX_TASKS.register("cl")
def contrastive(cfg: Mapping[str, Any], dataset,
                model_cfg=None) -> ContrastiveTask:
  _feature_spec(dataset, cfg["feature"])
  return ContrastiveTask("cl", cfg["feature"], float(cfg["eta"]),
                         float(cfg["gamma"]), float(cfg["beta"]),
                         float(cfg["temperature"]), str(cfg["similarity"]))


@AUX_TASKS.register("kg")
def knowledge_graph(cfg: Mapping[str, Any], dataset,
                    model_cfg=None) -> KnowledgeTask:
  spec = _feature_spec(dataset, cfg["feature"])
  info = dataset.info
  needed = ("item_genre_ids", "item_year", "num_genres")
  missing = [k for k in needed if k not in info]
  if missing:
    raise ValueError(f"the kg task needs item metadata {missing} in the "
                     f"dataset's info; {dataset.name!r} has none (MovieLens "
                     f"provides it)")
  genre_ids = info["item_genre_ids"]
  genres = np.zeros((len(genre_ids), int(info["num_genres"])), np.uint8)
  for item, ids in enumerate(genre_ids):
    genres[item, list(ids)] = 1
  graph = knowledge.item_attribute_triples(
      genres, np.asarray(info["item_year"]), tuple(cfg["year_edges"]),
      genre_names=info.get("genre_names"))
  if graph.num_items != spec.num_rows:
    raise ValueError(f"kg: item metadata covers {graph.num_items} ids but "
                     f"feature {spec.name!r} has {spec.num_rows} rows")
  return KnowledgeTask("kg", cfg["feature"], graph,
                       batch_items=int(cfg["batch_items"]),
                       dim=int(cfg["dim"]), hidden=tuple(cfg["hidden"]))


def _next_interaction(label_kind: str, task_name: str):
  """Builder of the all-positions counterpart of dataset task `task_name`."""
  aux_name = f"{task_name}_all"

  def build(cfg: Mapping[str, Any], dataset, model_cfg=None
            ) -> NextInteractionTask:
    feature = cfg.get("feature", "hist_items")
    _feature_spec(dataset, feature)
    task = next((t for t in dataset.tasks if t.name == task_name), None)
    if task is None:
      raise ValueError(f"{aux_name} mirrors the dataset task {task_name!r}, "
                       f"which {dataset.name!r} does not have (its tasks: "
                       f"{[t.name for t in dataset.tasks]})")
    columns = dataset.splits["train"]
    needed = ["seq_targets"] + (["hist_ratings", "rating"]
                                if label_kind != "genre" else [])
    missing = [c for c in needed if c not in columns]
    if missing:
      raise ValueError(f"{aux_name} needs the columns {missing}; "
                       f"{dataset.name!r} has {sorted(columns)}")
    genres = None
    if label_kind == "genre":
      genre_ids = dataset.info.get("item_genre_ids")
      if genre_ids is None:
        raise ValueError(f"{aux_name} needs item metadata 'item_genre_ids' "
                         f"in the dataset's info; {dataset.name!r} has none")
      genres = np.zeros((len(genre_ids), task.num_classes), np.float32)
      for item, ids in enumerate(genre_ids):
        genres[item, list(ids)] = 1.0
    model_cfg = model_cfg or {}
    return NextInteractionTask(
        aux_name, feature, target_task=task, label_kind=label_kind,
        like_threshold=float(dataset.info.get("like_threshold", 4.0)),
        item_genres=genres,
        hidden=tuple(model_cfg.get("tower_hidden", ())),
        dropout_rate=float(model_cfg.get("dropout", 0.0)))

  build.__name__ = f"{aux_name}_task"
  return build


for _kind in NEXT_INTERACTION_LABELS:
  AUX_TASKS.register(f"{_kind}_all")(_next_interaction(_kind, _kind))


def default_aux_config() -> dict[str, Any]:
  """`config.aux`: which auxiliary tasks to train and each one's settings."""
  return {
      "tasks": (),
      # Train the auxiliary tasks alone (pre-training): no dataset task.
      "only": False,
      "mim": {"feature": "hist_items",
              "mask_prob": sequence_ssl.CLOZE_MASK_PROB},
      # loss: softmax | sampled_softmax (num_negatives items) | bce;
      # head: mlp (BERT4Rec's) | dot (SASRec's); negatives (bce): uniform |
      # unseen (SASRec's sampler: items the user has not trained on);
      # softmax_impl (softmax): full ([B, L, V] logits) | fused (chunked,
      # same loss up to float rounding, faster); shared_pass: rating_all,
      # like_all and genre_all read next_all's encoder pass instead of
      # encoding the sequence again (`task_encoders`; the same math
      # without dropout, with dropout they share its masks).
      "next_all": {"feature": "hist_items", "targets": "seq_targets",
                   "loss": "softmax", "num_negatives": SAMPLED_NEGATIVES,
                   "head": "mlp", "negatives": "uniform",
                   "softmax_impl": "full", "shared_pass": False},
      "cl": {"feature": "hist_items", "eta": sequence_ssl.CROP_ETA,
             "gamma": sequence_ssl.MASK_GAMMA,
             "beta": sequence_ssl.REORDER_BETA,
             "temperature": sequence_ssl.INFO_NCE_TEMPERATURE,
             "similarity": sequence_ssl.INFO_NCE_SIMILARITY},
      "kg": {"feature": "hist_items", "batch_items": 256, "dim": 32,
             "hidden": (), "year_edges": (1940, 1950, 1960, 1970, 1980, 1990,
                                          2000)},
  }


def aux_keep() -> config_lib.Keep:
  """The aux keys that can change a run: `tasks`, `only` (every plain key)
  and the settings of the listed tasks only."""
  return config_lib.Keep(plain=True, chooser="tasks")


CONFIG_SECTIONS.register("aux")(config_lib.Section(
    defaults=default_aux_config, keep=aux_keep))


def build_aux_tasks(aux_cfg: Mapping[str, Any], dataset,
                    model_cfg: Mapping[str, Any] | None = None
                    ) -> tuple[AuxTask, ...]:
  """The auxiliary tasks `aux.tasks` names, built for `dataset`; `model_cfg`
  (`config.model`) sizes the towers of the `NextInteractionTask`s."""
  names = tuple(aux_cfg.get("tasks", ()))
  if len(set(names)) != len(names):
    raise ValueError(f"aux.tasks lists a task twice: {names}")
  task_names = {t.name for t in dataset.tasks}
  out = []
  for name in names:
    builder = AUX_TASKS.get(name)  # unknown names list the closest ones
    if name in task_names:
      raise ValueError(f"auxiliary task {name!r} has the name of a dataset "
                       f"task")
    out.append(builder(aux_cfg.get(name, {}), dataset, model_cfg or {}))
  if "next_all" in names:
    shared = aux_cfg.get("next_all", {}).get("shared_pass", False)
    if not isinstance(shared, (bool, np.bool_)):
      raise ValueError(f"aux.next_all.shared_pass must be a bool, got "
                       f"{shared!r} (--set aux.next_all.shared_pass=true)")
    if shared:
      out = [dataclasses.replace(t, shared_pass=True)
             if t.reads_unmasked_sequence else t for t in out]
  return tuple(out)
