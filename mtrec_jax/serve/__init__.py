"""From a trained run to predictions: load, recommend, export for serving.

    run = mtrec_jax.load_run("runs/ml100k-mtl/tasks=next_item,seed=0")
    run.predict(batch)                  # every task's prediction, jitted
    run.recommend(user=42, k=10)        # top-k unseen items with scores
    run.item_embeddings()               # [num_items + 1, E]
    export_model(run, "served/")        # jax.export StableHLO + parameters

`load.py` rebuilds the model from a run folder's config.json and its Orbax
`params/`; `recommend.py` turns users or raw histories into model inputs and
ranks items; `export.py` writes the prediction function as serialized
StableHLO with a symbolic batch size; `commands.py` holds the `mtrec
recommend` and `mtrec export-model` subcommands; `item_text.py` what a run
trained with item text (issue 18) needs to load, and its serving form.  This package's
`__init__` imports nothing heavy, so the CLI stays quick to start.
"""
from __future__ import annotations

_LAZY = {"load_run": "load", "LoadedRun": "load", "export_model": "export",
         "add_commands": "commands"}


def __getattr__(name: str):
  if name in _LAZY:
    import importlib
    module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
    return getattr(module, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
