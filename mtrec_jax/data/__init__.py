"""Datasets: builders registered in `mtrec_jax.registry.DATASETS`."""
from mtrec_jax import _autoimport

_autoimport.import_submodules(__name__, __path__)
