"""Registered experiments: one file per benchmark family.

Each module registers one or more experiments with
`@mtrec_jax.registry.EXPERIMENTS.register(name)`; its docstring says how to
run it and what result it should give.  `mtrec list` shows them all.
"""
from mtrec_jax import _autoimport

_autoimport.import_submodules(__name__, __path__)
