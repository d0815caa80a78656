"""The full multi-task model: feature encoder -> connection -> task towers.

The parameter tree is fixed as ``{'shared': ..., 'towers': {task: ...}}``
because the weighting engine splits parameters that way: everything under
``shared`` receives every task's gradient, ``towers[task]`` only its own.
``represent`` and ``heads`` are exposed separately so the engine can take
gradients w.r.t. the shared representation (representation mode).
"""
from __future__ import annotations

import numbers
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mtrec_jax.models.aux_heads import AuxHeads
from mtrec_jax.tasks.auxiliary import AuxTask, task_encoders
from mtrec_jax.models.embeddings import Batch, FeatureEncoder
from mtrec_jax.models.encoder import EncoderConfig
from mtrec_jax.models.towers import MLP
from mtrec_jax.specs import FeatureSpec, validate_features

Dtype = Any


class SharedTrunk(nn.Module):
  """FeatureEncoder + connection: batch -> [K, B, H] float32.

  `task_inputs[k]` names features only task k reads (e.g. the candidate item
  of a rating task, which would be the answer of a next-item task): they are
  left out of the connection's input and appended to row k of the
  representation instead (rows of other tasks get zeros there), so both
  gradient modes see them and the representation keeps one width H.
  `excluded` names further features no task reads.
  """
  features: tuple[FeatureSpec, ...]
  connection: nn.Module
  encoder: EncoderConfig = EncoderConfig()
  dtype: Dtype = jnp.float32
  task_inputs: tuple[tuple[str, ...], ...] = ()
  excluded: tuple[str, ...] = ()
  mask_tokens: tuple[str, ...] = ()
  item_text: Any = None

  def setup(self):
    self.feature_encoder = FeatureEncoder(self.features, self.encoder,
                                          self.dtype, self.mask_tokens,
                                          self.item_text)

  def _shared_names(self) -> tuple[str, ...] | None:
    private = {n for names in self.task_inputs for n in names}
    private |= set(self.excluded)
    if not private:
      return None
    return tuple(s.name for s in self.features if s.name not in private)

  def __call__(self, batch: Batch, *, train: bool = False) -> jax.Array:
    x = self.feature_encoder(batch, train=train, names=self._shared_names())
    rep = self.connection(x, train=train)
    k = self.connection.num_tasks
    if rep.ndim != 3 or rep.shape[:2] != (k, x.shape[0]):
      raise ValueError(f"{type(self.connection).__name__} returned shape "
                       f"{rep.shape}; connections must return [K={k}, B, H]")
    rep = rep.astype(jnp.float32)
    if not any(self.task_inputs):
      return rep
    own = [self.feature_encoder(batch, train=train, names=names)
           .astype(jnp.float32) for names in self.task_inputs]
    width = max(o.shape[-1] for o in own)
    own = jnp.stack([jnp.pad(o, ((0, 0), (0, width - o.shape[-1])))
                     for o in own])
    return jnp.concatenate([rep, own], axis=-1)


class TaskTowers(nn.Module):
  """One MLP tower per task, named by the task; tower k reads rep[k]."""
  task_dims: tuple[tuple[str, int], ...]
  hidden: tuple[int, ...] = (32,)
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, rep: jax.Array, *, train: bool = False
               ) -> dict[str, jax.Array]:
    if rep.ndim != 3 or rep.shape[0] != len(self.task_dims):
      raise ValueError(f"towers expect a [K={len(self.task_dims)}, B, H] "
                       f"representation, got shape {rep.shape}")
    return {
        task: MLP(self.hidden, dim, self.dropout_rate, dtype=self.dtype,
                  name=task)(rep[k], train=train).astype(jnp.float32)
        for k, (task, dim) in enumerate(self.task_dims)
    }


class MultiTaskModel(nn.Module):
  """Multi-task recommender with a pluggable cross-task connection.

  Attributes:
    features: the input features (see `features.FeatureSpec`).
    task_dims: (task name, output width) pairs, in task order.
    connection: an (unbound) registered connection module, num_tasks == K.
    tower_hidden: hidden widths of every task tower.
    dropout_rate: dropout inside the towers.
    encoder: hyper-parameters of the sequence-feature encoders.
    dtype: compute dtype; parameters stay float32 and outputs are float32.
    task_inputs: per task (in task order), features only that task's tower
      reads (see `SharedTrunk`); empty = every feature is shared.
    excluded: features no task reads (e.g. another task's private input when
      that task is not trained).
    aux_tasks: auxiliary (self-supervised, knowledge) tasks computed from the
      shared feature encoder (`tasks.auxiliary`; their heads are
      `models.aux_heads`); their losses come from `aux_losses`, their
      private parameters sit under params['aux'].  With
      auxiliary tasks, `task_dims` may be empty (pre-training).
    item_text: item text in the item table (`models.item_text.TextItems`),
      None for id embeddings only.
  """
  features: tuple[FeatureSpec, ...]
  task_dims: tuple[tuple[str, int], ...]
  connection: nn.Module
  tower_hidden: tuple[int, ...] = (32,)
  dropout_rate: float = 0.0
  encoder: EncoderConfig = EncoderConfig()
  dtype: Dtype = jnp.float32
  task_inputs: tuple[tuple[str, ...], ...] = ()
  excluded: tuple[str, ...] = ()
  aux_tasks: tuple[AuxTask, ...] = ()
  item_text: Any = None

  def __post_init__(self):
    validate_features(self.features)  # Fail at build time, not in init.
    names = [task for task, _ in self.task_dims]
    if not names and not self.aux_tasks:
      raise ValueError("MultiTaskModel needs at least one task in task_dims "
                       "or in aux_tasks")
    names_all = names + [t.name for t in self.aux_tasks]
    causal = [t.name for t in self.aux_tasks if t.needs_causal_encoder]
    if causal and not self.encoder.causal:
      raise ValueError(f"auxiliary task(s) {causal} predict each position's "
                       f"next item, which a bidirectional encoder sees; set "
                       f"model.encoder.causal=True")
    if len(set(names_all)) != len(names_all):
      raise ValueError(f"task names must be unique, got {names_all}")
    bad = [(t, d) for t, d in self.task_dims
           if not isinstance(d, numbers.Integral) or d < 1]
    if bad:
      raise ValueError(f"task output widths must be positive ints, got {bad}")
    k = getattr(self.connection, "num_tasks", None)
    if names and k != len(names):  # no tasks: pre-training, never called
      raise ValueError(f"connection {type(self.connection).__name__} has "
                       f"num_tasks={k} but task_dims lists {len(names)} tasks "
                       f"{names}")
    if self.task_inputs and len(self.task_inputs) != len(names):
      raise ValueError(f"task_inputs has {len(self.task_inputs)} entries for "
                       f"{len(names)} tasks {names}")
    known = {f.name for f in self.features}
    for name in [n for ns in self.task_inputs for n in ns] + list(
        self.excluded):
      if name not in known:
        raise ValueError(f"task input {name!r} is not a feature; features: "
                         f"{', '.join(sorted(known))}")
    super().__post_init__()

  @property
  def task_names(self) -> tuple[str, ...]:
    return tuple(task for task, _ in self.task_dims)

  def setup(self):
    # A fresh copy, so the connection's parameters live under 'shared'
    # rather than being adopted by this module as a top-level child.
    masks = tuple(sorted({t.feature for t in self.aux_tasks
                          if t.needs_mask_token}))
    self.shared = SharedTrunk(self.features, self.connection.clone(),
                              self.encoder, self.dtype, self.task_inputs,
                              self.excluded, masks, self.item_text)
    self.towers = TaskTowers(self.task_dims, self.tower_hidden,
                             self.dropout_rate, self.dtype)
    if self.aux_tasks:
      self.aux = AuxHeads(self.aux_tasks)

  @property
  def aux_names(self) -> tuple[str, ...]:
    return tuple(t.name for t in self.aux_tasks)

  def aux_losses(self, batch: Batch, key: jax.Array, *, train: bool = False
                 ) -> jax.Array:
    """[A] losses of the auxiliary tasks, in `aux_tasks` order; `key` draws
    their masks, augmentations and knowledge-graph queries."""
    encoders = task_encoders(self.aux_tasks, self.shared.feature_encoder)
    keys = jax.random.split(key, max(len(self.aux_tasks), 1))
    losses = [t.loss(encoders[i], self._aux_head(t.name), batch, keys[i],
                     train) for i, t in enumerate(self.aux_tasks)]
    return jnp.stack(losses).astype(jnp.float32)

  def aux_scores(self, batch: Batch) -> dict[str, jax.Array]:
    """Evaluation scores of the auxiliary tasks that have an `eval_task`."""
    encoder = self.shared.feature_encoder
    return {t.name: t.scores(encoder, self._aux_head(t.name), batch)
            for t in self.aux_tasks if t.eval_task is not None}

  def _aux_head(self, name: str):
    """Auxiliary task `name`'s private head as a plain callable."""
    return lambda *args, **kwargs: self.aux(name, *args, **kwargs)

  def init_all(self, batch: Batch, key: jax.Array) -> dict[str, jax.Array]:
    """Touches every parameter (task towers and auxiliary heads); `init`
    with ``method='init_all'`` builds the whole tree."""
    out = self(batch) if self.task_dims else {}
    if self.aux_tasks:
      out = {**out, "aux": self.aux_losses(batch, key)}
    return out

  def represent(self, batch: Batch, *, train: bool = False) -> jax.Array:
    """The shared part: batch -> [K, B, H] float32, one row per task."""
    return self.shared(batch, train=train)

  def heads(self, rep: jax.Array, *, train: bool = False
            ) -> dict[str, jax.Array]:
    """Task towers: rep [K, B, H] -> {task: [B, out_dim] float32}."""
    return self.towers(rep, train=train)

  def __call__(self, batch: Batch, *, train: bool = False
               ) -> dict[str, jax.Array]:
    if not self.task_dims:
      return {}
    return self.heads(self.represent(batch, train=train), train=train)

  def embedding_table(self, name: str) -> jax.Array:
    """Float32 embedding table of feature `name` (e.g. the shared item table
    for next-item scoring); use with `apply(..., method='embedding_table')`."""
    return self.shared.feature_encoder.embedding_table(name)

  def embed_ids(self, name: str, ids) -> jax.Array:
    """Embeds ids of feature `name` exactly as the model does (hash, pad=0)."""
    return self.shared.feature_encoder.embed_ids(name, ids)


def task_dims_tuple(task_dims: Mapping[str, int] | Any
                    ) -> tuple[tuple[str, int], ...]:
  """Normalises a {task: dim} mapping or (task, dim) pairs to a tuple."""
  items = task_dims.items() if isinstance(task_dims, Mapping) else task_dims
  return tuple((str(task), int(dim)) for task, dim in items)
