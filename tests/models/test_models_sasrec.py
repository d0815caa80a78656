"""SASRec as the public reference (pmixer/SASRec.pytorch) computes it: the
'sasrec' encoder layout against a numpy re-implementation of the
reference's forward pass (and, where torch is installed, against torch's
own MultiheadAttention/LayerNorm/Conv1d), its initialisation, the bce
loss's gathered scores against the full logits (value and gradient), and
the 'unseen' negative sampler."""
from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mtrec_jax.data import movielens as ml
from mtrec_jax.tasks import auxiliary
from mtrec_jax.models.build import build_model, default_model_config
from mtrec_jax.models.encoder import (EncoderConfig, TransformerEncoder,
                                      SASREC_LN_EPS)

from tests.models.test_models_all_positions import random_movielens

NUM_ITEMS = 40


# ---------------------------------------------------------------- helpers
def _layer_norm(x, scale, bias, eps=SASREC_LN_EPS):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * scale + bias


def numpy_sasrec(params, x, num_heads):
  """The reference's `log2feats` after the input (eval mode, no dropout),
  written from its code: post-LN blocks over a causal mask with NO padding
  mask, point-wise FFN with ReLU, a final LayerNorm."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  x = np.asarray(x, np.float64)
  _, length, width = x.shape
  head_dim = width // num_heads
  allowed = np.tril(np.ones((length, length), bool))
  i = 0
  while f"block_{i}" in p:
    blk = p[f"block_{i}"]
    att = blk["attention"]
    q, k, v = (np.einsum("ble,ehd->blhd", x, att[n]["kernel"])
               + att[n]["bias"] for n in ("query", "key", "value"))
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(head_dim)
    logits = np.where(allowed, logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", w, v)
    out = np.einsum("bqhd,hde->bqe", out, att["out"]["kernel"]) \
        + att["out"]["bias"]
    x = _layer_norm(x + out, blk["attention_norm"]["scale"],
                    blk["attention_norm"]["bias"])
    f = np.maximum(x @ blk["ffn_in"]["kernel"] + blk["ffn_in"]["bias"], 0)
    f = f @ blk["ffn_out"]["kernel"] + blk["ffn_out"]["bias"]
    x = _layer_norm(x + f, blk["ffn_norm"]["scale"], blk["ffn_norm"]["bias"])
    i += 1
  return _layer_norm(x, p["final_norm"]["scale"], p["final_norm"]["bias"])


def sasrec_encoder(num_heads=1, width=8, layers=2, dropout=0.0):
  cfg = EncoderConfig(num_layers=layers, num_heads=num_heads,
                      hidden_dim=width, mlp_dim=width, causal=True,
                      pooling="last", layout="sasrec", dropout_rate=dropout,
                      attention_dropout_rate=dropout)
  return cfg, TransformerEncoder.from_config(cfg)


def perturbed(params, key, scale=0.3):
  """Random non-default values for every parameter (LayerNorm included),
  so a swapped scale/bias or a missing bias shows."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(tree, [
      a + scale * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])


# ---------------------------------------------------------------- encoder
@pytest.mark.parametrize("num_heads", [1, 2])
def test_sasrec_layout_matches_numpy_reference(num_heads):
  cfg, enc = sasrec_encoder(num_heads)
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 6, 8)).astype(np.float32)
  pad = np.array([[0, 0, 1, 1, 1, 1], [1] * 6, [0] * 5 + [1]], bool)
  x = np.where(pad[..., None], x, 0.0)  # padding inputs are exactly zero
  params = enc.init(jax.random.PRNGKey(0), x, pad)["params"]
  params = perturbed(params, jax.random.PRNGKey(1))
  got = np.asarray(enc.apply({"params": params}, x, pad), np.float64)
  want = numpy_sasrec(params, x, num_heads)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5)
  # Padding keys are attended to (no key-padding mask), unlike 'pre_ln':
  # moving a padding token's input changes the real positions' outputs.
  x2 = x.copy()
  x2[0, 0] = 1.0
  moved = np.asarray(enc.apply({"params": params}, x2, pad))
  assert np.abs(moved[0, 2:] - got[0, 2:]).max() > 1e-3


def test_sasrec_layout_matches_torch_modules():
  """The same weights in torch.nn.MultiheadAttention / LayerNorm(eps=1e-8)
  / Conv1d(k=1), wired as the reference's post-LN `log2feats`."""
  torch = pytest.importorskip("torch")
  cfg, enc = sasrec_encoder(num_heads=2, width=8)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 5, 8)).astype(np.float32)
  pad = np.ones((2, 5), bool)
  params = perturbed(enc.init(jax.random.PRNGKey(0), x, pad)["params"],
                     jax.random.PRNGKey(2))
  got = np.asarray(enc.apply({"params": params}, x, pad))
  t = lambda a: torch.tensor(np.asarray(a, np.float32))
  seqs = t(x)
  mask = ~torch.tril(torch.ones((5, 5), dtype=torch.bool))
  with torch.no_grad():
    for i in range(2):
      blk = params[f"block_{i}"]
      att = blk["attention"]
      mha = torch.nn.MultiheadAttention(8, 2, 0.0)
      w = [np.asarray(att[n]["kernel"]).reshape(8, 8).T
           for n in ("query", "key", "value")]
      mha.in_proj_weight.copy_(t(np.concatenate(w, 0)))
      mha.in_proj_bias.copy_(t(np.concatenate(
          [np.asarray(att[n]["bias"]).reshape(8)
           for n in ("query", "key", "value")])))
      mha.out_proj.weight.copy_(t(np.asarray(att["out"]["kernel"])
                                  .reshape(8, 8).T))
      mha.out_proj.bias.copy_(t(att["out"]["bias"]))
      ln1, ln2 = (torch.nn.LayerNorm(8, eps=1e-8) for _ in range(2))
      for ln, name in ((ln1, "attention_norm"), (ln2, "ffn_norm")):
        ln.weight.copy_(t(blk[name]["scale"]))
        ln.bias.copy_(t(blk[name]["bias"]))
      conv1, conv2 = (torch.nn.Conv1d(8, 8, kernel_size=1) for _ in range(2))
      for conv, name in ((conv1, "ffn_in"), (conv2, "ffn_out")):
        conv.weight.copy_(t(np.asarray(blk[name]["kernel"]).T[:, :, None]))
        conv.bias.copy_(t(blk[name]["bias"]))
      q = seqs.transpose(0, 1)
      out, _ = mha(q, q, q, attn_mask=mask)
      seqs = ln1(q + out).transpose(0, 1)
      ffn = conv2(torch.relu(conv1(seqs.transpose(-1, -2)))).transpose(-1, -2)
      seqs = ln2(seqs + ffn)
    last = torch.nn.LayerNorm(8, eps=1e-8)
    last.weight.copy_(t(params["final_norm"]["scale"]))
    last.bias.copy_(t(params["final_norm"]["bias"]))
    want = last(seqs).numpy()
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_sasrec_initialisation_is_torchs():
  """Xavier-normal matrices (q/k/v with the fans of torch's [3E, E]
  in_proj), zero attention biases, U(+-1/sqrt(fan_in)) FFN biases."""
  width = 64
  _, enc = sasrec_encoder(width=width, layers=1)
  x = np.zeros((1, 4, width), np.float32)
  params = enc.init(jax.random.PRNGKey(0), x, np.ones((1, 4), bool))["params"]
  blk = params["block_0"]
  for name, std in (("query", (2 / (4 * width)) ** 0.5),
                    ("out", (1 / width) ** 0.5)):
    k = np.asarray(blk["attention"][name]["kernel"])
    assert abs(k.std() / std - 1) < 0.08, (name, k.std(), std)
    assert np.abs(k).max() > 2.5 * std  # not truncated at 2 std
    assert not np.asarray(blk["attention"][name]["bias"]).any()
  ffn = np.asarray(blk["ffn_in"]["kernel"])
  assert abs(ffn.std() / (1 / width) ** 0.5 - 1) < 0.08
  b = np.asarray(blk["ffn_in"]["bias"])
  assert np.abs(b).max() <= width ** -0.5 and b.std() > 0.3 * width ** -0.5
  cfg = EncoderConfig(hidden_dim=width, layout="sasrec")
  table = np.asarray(cfg.table_init(width)(jax.random.PRNGKey(1),
                                           (2000, width)))
  assert abs(table.std() / (2 / 2064) ** 0.5 - 1) < 0.03
  pos = np.asarray(cfg.position_init(199)(jax.random.PRNGKey(2),
                                          (199, width)))
  assert abs(pos.std() / (2 / (200 + width)) ** 0.5 - 1) < 0.05


def test_sasrec_inputs_scale_items_and_skip_padding_positions():
  cfg = EncoderConfig(hidden_dim=4, layout="sasrec")
  items = jnp.arange(24, dtype=jnp.float32).reshape(2, 3, 4)
  items = items.at[0, 0].set(0.0)
  positions = jnp.ones((3, 4)) * 5.0
  real = jnp.array([[False, True, True], [True, True, True]])
  got = np.asarray(cfg.input_tokens(items, positions, real))
  want = np.asarray(items) * 2.0 + 5.0
  want[0, 0] = 0.0  # padding: the reference's zero rows of both tables
  np.testing.assert_allclose(got, want)
  default = EncoderConfig(hidden_dim=4)
  np.testing.assert_array_equal(
      np.asarray(default.input_tokens(items, positions, real)),
      np.asarray(items + positions))


def test_sasrec_layout_errors():
  with pytest.raises(ValueError, match="layout must be one of"):
    EncoderConfig(layout="post_ln")
  with pytest.raises(ValueError, match="no \\[cls\\] token"):
    EncoderConfig(layout="sasrec", pooling="cls")


# ------------------------------------------------------------- next_all
@pytest.fixture(scope="module")
def movielens(tmp_path_factory):
  folder = tmp_path_factory.mktemp("ml") / "ml-100k"
  random_movielens(folder)
  raw = ml.read_movielens(folder, "100k", strict_counts=False)
  return ml.movielens_dataset(raw, max_len=5, embed_dim=8,
                              train_examples="sequences")


def build(ds, head="mlp", negatives="uniform", layout="pre_ln", loss="bce"):
  cfg = default_model_config()
  cfg.encoder.hidden_dim = 8
  cfg.encoder.mlp_dim = 8
  cfg.encoder.num_heads = 1
  cfg.encoder.dropout = 0.0
  cfg.encoder.attention_dropout = 0.0
  cfg.encoder.causal = True
  cfg.encoder.pooling = "last"
  cfg.encoder.layout = layout
  aux = auxiliary.default_aux_config()
  aux["tasks"] = ("next_all",)
  aux["next_all"] = {**aux["next_all"], "loss": loss, "head": head,
                     "negatives": negatives}
  (task,) = auxiliary.build_aux_tasks(aux, ds, cfg.to_dict())
  model = build_model(cfg, ds.features, (), (task,))
  batch = {k: jnp.asarray(v) for k, v in ds.splits["train"].items()}
  params = model.init(jax.random.PRNGKey(0), batch, jax.random.PRNGKey(1),
                      method="init_all")["params"]
  params = perturbed(params, jax.random.PRNGKey(5), 0.1)
  return model, task, params, batch


def full_logits_bce(model, task, params, batch, key):
  """The bce loss as before the gather: [B, L, V] logits, two read off."""
  def run(m, b):
    encoder = m.shared.feature_encoder
    ids = jnp.asarray(b[task.feature])
    targets = jnp.asarray(b[task.targets])
    logits = task._logits(encoder, m._aux_head(task.name), ids, False)
    negatives = task.bce_negatives(jax.random.split(key, 1)[0], targets, b)
    pos = jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]
    neg = jnp.take_along_axis(logits, negatives[..., None], -1)[..., 0]
    per = (jax.nn.softplus(-pos) + jax.nn.softplus(neg))
    w = ((targets != 0) & (ids != 0)).astype(jnp.float32)
    return jnp.sum(per * w) / jnp.maximum(jnp.sum(w), 1.0)
  return jax.value_and_grad(
      lambda p: model.apply({"params": p}, batch, method=run))(params)


@pytest.mark.parametrize("head,negatives,layout", [
    ("mlp", "uniform", "pre_ln"), ("dot", "unseen", "sasrec"),
    ("dot", "uniform", "pre_ln")])
def test_bce_gather_equals_full_logits(movielens, head, negatives, layout):
  model, task, params, batch = build(movielens, head, negatives, layout)
  key = jax.random.PRNGKey(7)
  got, got_grad = jax.value_and_grad(lambda p: model.apply(
      {"params": p}, batch, key, train=False, method="aux_losses")[0])(params)
  want, want_grad = full_logits_bce(model, task, params, batch, key)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
  flat_got = jax.tree.leaves(got_grad)
  flat_want = jax.tree.leaves(want_grad)
  assert len(flat_got) == len(flat_want)
  for g, w in zip(flat_got, flat_want):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4,
                               atol=1e-7)


def test_bce_gather_equals_full_logits_float64():
  """The dot head's gathered scores in float64: value and gradient with
  respect to the hidden states and the table equal the full logits'."""
  with jax.enable_x64(True):
    task = auxiliary.NextItemSequenceTask(
        "next_all", loss_kind="bce", embed_dim=6, num_items=30,
        head_kind="dot")
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(4, 7, 6)))
    table = jnp.asarray(rng.normal(size=(30, 6)))
    targets = jnp.asarray(rng.integers(0, 30, size=(4, 7)))
    negatives = jnp.asarray(rng.integers(1, 30, size=(4, 7)))

    def gathered(h, table):
      pos = task._score(None, h, table, targets)
      neg = task._score(None, h, table, negatives)
      return jnp.sum(jax.nn.softplus(-pos) + jax.nn.softplus(neg))

    def full(h, table):
      logits = task._score(None, h, table)
      pos = jnp.take_along_axis(logits, targets[..., None], -1)
      neg = jnp.take_along_axis(logits, negatives[..., None], -1)
      return jnp.sum(jax.nn.softplus(-pos) + jax.nn.softplus(neg))

    a, ga = jax.value_and_grad(gathered, argnums=(0, 1))(h, table)
    b, gb = jax.value_and_grad(full, argnums=(0, 1))(h, table)
    assert a.dtype == jnp.float64
    np.testing.assert_allclose(float(a), float(b), rtol=1e-13)
    for x, y in zip(ga, gb):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-12,
                                 atol=1e-14)


def test_unseen_negatives_are_uniform_over_unseen_items(movielens):
  _, task, _, _ = build(movielens, "dot", "unseen", "sasrec")
  seen = task.seen_items
  # Each user's training items: the validation row's history.
  val = movielens.splits["val"]
  for user, hist in zip(val["user"], val["exclude"]):
    want = set(int(i) for i in hist if i) | {0}
    assert set(np.flatnonzero(seen[user]).tolist()) == want
  users = np.asarray(val["user"])[:2]
  targets = jnp.ones((2, 4000), jnp.int32)
  negatives = np.asarray(jax.jit(task.bce_negatives)(
      jax.random.PRNGKey(0), targets, {"user": jnp.asarray(users)}))
  for row, user in enumerate(users):
    allowed = np.flatnonzero(~seen[user])
    assert not seen[user, negatives[row]].any()
    counts = np.bincount(negatives[row], minlength=seen.shape[1])[allowed]
    expected = negatives.shape[1] / allowed.size
    # every unseen item drawn, none far from uniform (chi-square, dof ~ 30)
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert counts.min() > 0 and chi2 < 3 * allowed.size, chi2


def test_next_all_sasrec_options_reject_bad_settings(movielens):
  with pytest.raises(ValueError, match="negatives='unseen' is the bce"):
    build(movielens, "dot", "unseen", "sasrec", loss="softmax")
  with pytest.raises(ValueError, match="head must be one of"):
    build(movielens, "linear")
  with pytest.raises(ValueError, match="negatives must be one of"):
    build(movielens, "dot", "popular")
  cfg = default_model_config()
  cfg.encoder.hidden_dim = 16
  aux = auxiliary.default_aux_config()
  aux["tasks"] = ("next_all",)
  aux["next_all"] = {**aux["next_all"], "head": "dot"}
  with pytest.raises(ValueError, match="hidden_dim \\(16\\) must equal"):
    auxiliary.build_aux_tasks(aux, movielens, cfg.to_dict())
  no_val = dataclasses_replace_splits(movielens)
  aux["next_all"] = {**aux["next_all"], "head": "mlp", "loss": "bce",
                     "negatives": "unseen"}
  with pytest.raises(ValueError, match="exclude"):
    auxiliary.build_aux_tasks(aux, no_val, cfg.to_dict())


def dataclasses_replace_splits(ds):
  import dataclasses
  splits = dict(ds.splits)
  splits["val"] = {k: v for k, v in splits["val"].items() if k != "exclude"}
  return dataclasses.replace(ds, splits=splits)
