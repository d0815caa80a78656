"""Models: feature encoder -> cross-task connection -> task towers.

Importing the package imports every submodule, so all connection modules are
registered in `mtrec_jax.registry.MODELS`.
"""
from __future__ import annotations

from mtrec_jax import _autoimport
from mtrec_jax.models.assembled import MultiTaskModel
from mtrec_jax.models.build import build_model, default_model_config
from mtrec_jax.models.embeddings import FeatureEncoder
from mtrec_jax.models.encoder import EncoderConfig, TransformerEncoder
from mtrec_jax.models.features import FeatureSpec, hash_ids
from mtrec_jax.models.towers import MLP

_autoimport.import_submodules(__name__, __path__)

__all__ = ["EncoderConfig", "FeatureEncoder", "FeatureSpec", "MLP",
           "MultiTaskModel", "TransformerEncoder", "build_model",
           "default_model_config", "hash_ids"]
