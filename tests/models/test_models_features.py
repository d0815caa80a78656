"""FeatureSpec validation and id hashing."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from mtrec_jax.models import FeatureEncoder, FeatureSpec, hash_ids
from mtrec_jax.models.encoder import EncoderConfig
from mtrec_jax.models.features import validate_features


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="dense"), "kind must be one of"),
    (dict(kind="categorical"), "vocab_size >= 2"),
    (dict(kind="sequence", vocab_size=10), "max_len >= 1"),
    (dict(kind="numeric", dim=0), "dim >= 1"),
    (dict(kind="numeric", vocab_size=5), "numeric features take only"),
    (dict(kind="categorical", hash_buckets=1), "hash_buckets >= 2"),
    (dict(kind="categorical", vocab_size=5, share_with="f"),
     "names the feature itself"),
    (dict(kind="categorical", vocab_size=5, max_len=3),
     "max_len is for sequence"),
])
def test_spec_errors_name_the_feature(kwargs, match):
  with pytest.raises(ValueError, match=match) as err:
    FeatureSpec("f", **kwargs)
  assert "'f'" in str(err.value)


@pytest.mark.parametrize("specs, match", [
    ((FeatureSpec("a", "numeric"), FeatureSpec("a", "numeric")),
     "declared twice"),
    ((FeatureSpec("h", "sequence", max_len=3, share_with="item"),),
     "not a feature"),
    ((FeatureSpec("a", "numeric"),
      FeatureSpec("h", "sequence", max_len=3, share_with="a")), "numeric"),
    ((FeatureSpec("i", "categorical", vocab_size=9),
      FeatureSpec("j", "categorical", share_with="i"),
      FeatureSpec("k", "categorical", share_with="j")), "directly"),
    ((FeatureSpec("i", "categorical", vocab_size=9),
      FeatureSpec("h", "sequence", max_len=3, embed_dim=4, share_with="i")),
     "embed_dim"),
    ((FeatureSpec("i", "categorical", vocab_size=9),
      FeatureSpec("h", "sequence", max_len=3, vocab_size=8, share_with="i")),
     "vocab_size=8"),
    ((), "at least one"),
])
def test_feature_set_errors(specs, match):
  with pytest.raises(ValueError, match=match):
    validate_features(specs)


def test_hash_ids_keeps_padding_and_stays_in_range():
  ids = np.array([0, 1, 2, 10**6, 2**31 - 1, 12345, 0], np.int32)
  hash_jit = jax.jit(hash_ids, static_argnums=1)
  buckets = np.asarray(hash_jit(ids, 7))
  assert buckets[0] == 0 and buckets[-1] == 0
  assert ((buckets[1:-1] >= 1) & (buckets[1:-1] <= 6)).all()
  np.testing.assert_array_equal(buckets, np.asarray(hash_ids(ids, 7)))
  spread = np.asarray(hash_jit(np.arange(1, 1001, dtype=np.int32), 7))
  assert set(spread.tolist()) == set(range(1, 7))  # Every bucket is used.


def test_hashed_feature_table_and_lookup():
  spec = FeatureSpec("city", "categorical", hash_buckets=5, embed_dim=3)
  enc = FeatureEncoder((spec,), EncoderConfig())
  ids = np.array([0, 7, 10**6, 2**30], np.int32)  # Far beyond any vocabulary.
  variables = enc.init(jax.random.key(0), {"city": ids})
  table = variables["params"]["embed_city"]
  assert table.shape == (5, 3)
  out = np.asarray(enc.apply(variables, {"city": ids}))
  assert np.isfinite(out).all()
  np.testing.assert_array_equal(out[0], 0.0)  # Padding embeds to zero.
  rows = np.asarray(hash_ids(ids, 5))
  np.testing.assert_allclose(out[1:], np.asarray(table)[rows[1:]])
