"""Where dropout's random bits come from: ``train.dropout_bits``.

'threefry' (the default; what every run stored before the option existed):
the train step hands the model JAX's Threefry-2x32 keys, and every dropout
mask is drawn with Threefry, 20 rounds of mixing per pair of 32-bit words.

'hash': the same keys, wrapped as keys of `HASH_IMPL` (a PRNG implementation
registered with `jax.extend.random.define_prng_impl`), so every dropout mask
of the model (`flax.linen.Dropout`, the attention-weight dropout of
`MultiHeadDotProductAttention`, whatever module draws from the 'dropout'
stream) reads its bits from a counter hash instead: element i of a draw is
``fmix32(fmix32(i * 0x9E3779B9 + k0) ^ k1)``, with ``(k0, k1)`` the draw's
key and fmix32 the 32-bit finaliser of MurmurHash3 (Appleby, 2008): 8
integer operations a word instead of Threefry's ~80.  Keys are still split
and folded with Threefry, so the key tree (which module, which step, which
population member) is JAX's; only the bulk bits differ.

Why: at SASRec's reference configuration (length 200, 2 layers, attention
dropout 0.2) one step draws 128 x 200 x 200 attention-dropout variables per
layer, about 16M a step with the other dropouts, and on CPU drawing them
was about a third of the step (references/results/sasrec_ref/ and
benchmarks/results/ hold the measurements).

What changes: the masks, not their distribution.  Each element is kept
with probability 1 - rate up to the 2^-32 resolution of the comparison (as
with Threefry), and masks of different keys are unrelated; within one draw
the n values are distinct (the hash is a bijection of the counter), a
negligible departure from independence for n << 2^32 (draws must be
smaller than 2^32 elements).  It is a statistical hash, not a cryptographic
generator: good enough for dropout masks, and used for nothing else (the
auxiliary tasks' negative sampling and the strategies' draws keep their
Threefry keys).  A run with 'hash' is a different run from its 'threefry'
twin (other masks, so other numbers); it is as deterministic.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.extend.random import define_prng_impl

CHOICES = ("threefry", "hash")
_THREEFRY = "threefry2x32"
_GOLDEN = 0x9E3779B9


def fmix32(x: jax.Array) -> jax.Array:
  """MurmurHash3's 32-bit finaliser: a bijection of uint32 with full
  avalanche (each input bit flips each output bit with probability ~1/2)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> 13)
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def hash_words(key: jax.Array, n: int) -> jax.Array:
  """n uint32 words of the counter hash for a uint32[2] key."""
  if n >= 2 ** 32:
    raise ValueError(f"train.dropout_bits='hash' draws at most 2^32 - 1 "
                     f"values at once, asked for {n}")
  i = jax.lax.iota(jnp.uint32, n)
  return fmix32(fmix32(i * jnp.uint32(_GOLDEN) + key[0]) ^ key[1])


def _threefry(data):
  return jax.random.wrap_key_data(data, impl=_THREEFRY)


def _seed(seed):
  return jax.random.key_data(jax.random.key(seed, impl=_THREEFRY))


def _split(key, shape):
  return jax.random.key_data(jax.random.split(_threefry(key), shape))


def _fold_in(key, data):
  return jax.random.key_data(jax.random.fold_in(_threefry(key), data))


def _random_bits(key, bit_width, shape):
  n = math.prod(shape)
  if bit_width == 64:
    words = hash_words(key, 2 * n).reshape(2, n).astype(jnp.uint64)
    return ((words[0] << 32) | words[1]).reshape(shape)
  dtype = {8: jnp.uint8, 16: jnp.uint16, 32: jnp.uint32}[bit_width]
  # The top bits: fmix32's are as mixed as its low ones.
  return (hash_words(key, n) >> (32 - bit_width)).astype(dtype).reshape(shape)


HASH_IMPL = define_prng_impl(key_shape=(2,), seed=_seed, split=_split,
                             random_bits=_random_bits, fold_in=_fold_in,
                             name="mtrec_hash32", tag="mh")


def check(name: str) -> str:
  if name not in CHOICES:
    raise ValueError(f"train.dropout_bits must be one of "
                     f"{', '.join(map(repr, CHOICES))}, got {name!r}")
  return name


def dropout_key(key: jax.Array, name: str) -> jax.Array:
  """The key the model's 'dropout' stream gets from the step's raw Threefry
  key (uint32[2]): itself for 'threefry', the same data as a `HASH_IMPL` key
  for 'hash'."""
  if check(name) == "threefry":
    return key
  return jax.random.wrap_key_data(key, impl=HASH_IMPL)
