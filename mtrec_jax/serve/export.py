"""`export_model`: a run's prediction function for serving without this code.

Writes three files to a folder:

* model.stablehlo: ``jax.export`` of ``(params, inputs) -> {task:
  prediction}`` (`LoadedRun.predict_fn`), serialized StableHLO with a
  symbolic batch size ``b`` (`jax.export.symbolic_shape`), so one export
  serves any batch size;
* params.safetensors (numpy's params.npz when safetensors is not
  installed): the parameters as a flat {"a/b/c": array} map, the first
  argument of the exported function;
* manifest.json: input names, dtypes and shapes, output names, dtypes and
  shapes, the platforms lowered for, the jax version that exported it and
  the calling convention version.

Item text (issue 18, `serve.item_text`): a run trained with
``model.item_repr`` 'text' or 'id+text' is exported in its serving form,
whose item-text vectors [items, text dim] (frozen: the cached sentence
embeddings; fine-tuned: the trained encoder's outputs, computed once at
load) are constants inside model.stablehlo, not inputs: they are a fixed
part of the trained model, like its parameters, and no request changes
them, so the inputs stay the item ids every other run takes, and a server
needs no text model, tokenizer or BERT.  The price: a larger function file
(the vectors' bytes) and no new items without a new export, which the
learned id table needs anyway.  manifest.json's "item_text" says what was
baked in (null for runs without item text).

A reader needs only jax and numpy (and safetensors for that format):

    exp = jax.export.deserialize(bytearray(open("model.stablehlo", "rb").read()))
    params = safetensors.numpy.load_file("params.safetensors")
    preds = exp.call(params, {"hist_items": ids})   # {task: [b, ...]}

Deserializing needs a jax that reads the export's calling convention
version (a jax as new as the exporting one is safe; jax keeps reading old
versions for a while, see the jax.export docs).  The function is lowered
for `platforms` only (default: this machine's backend); pass e.g.
("cpu", "cuda") to serve one file on both.
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Sequence

import jax
import numpy as np

from mtrec_jax.results import run_files
from mtrec_jax.serve.load import LoadedRun, flat_params

FUNCTION_FILE = "model.stablehlo"
MANIFEST_FILE = "manifest.json"
BATCH_DIM = "b"
FORMAT = "mtrec-jax-export/1"


def unflatten(flat: dict[str, Any]) -> dict[str, Any]:
  """{'a/b/c': x} -> {'a': {'b': {'c': x}}} (inverse of `flat_params`)."""
  tree: dict[str, Any] = {}
  for name, leaf in flat.items():
    node = tree
    *parents, last = name.split("/")
    for part in parents:
      node = node.setdefault(part, {})
    node[last] = leaf
  return tree


def _save_params(flat: dict[str, np.ndarray], out: pathlib.Path) -> str:
  try:
    from safetensors.numpy import save_file
  except ImportError:
    np.savez(out / "params.npz", **flat)
    return "params.npz"
  save_file({k: np.ascontiguousarray(v) for k, v in flat.items()},
            str(out / "params.safetensors"))
  return "params.safetensors"


def _shape(dims) -> list:
  return [d if isinstance(d, int) else str(d) for d in dims]


def export_model(run: LoadedRun, out_dir: str | pathlib.Path, *,
                 platforms: Sequence[str] | None = None) -> pathlib.Path:
  """Writes `run`'s prediction function, parameters and manifest to
  `out_dir` (created); returns the manifest's path."""
  out = pathlib.Path(out_dir)
  flat = flat_params(run.params)
  if set(flat_params(unflatten(flat))) != set(flat):
    raise ValueError("a parameter name holds '/', the separator of the "
                     "exported file's flat names; rename the module")
  platforms = tuple(platforms or (jax.default_backend(),))
  (b,) = jax.export.symbolic_shape(BATCH_DIM)
  param_specs = {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
                 for k, v in flat.items()}
  input_specs = {name: jax.ShapeDtypeStruct((b, *shape), dtype)
                 for name, (dtype, shape) in run.inputs.items()}

  def predict(params, inputs):
    return run.predict_fn(unflatten(params), inputs)

  exported = jax.export.export(jax.jit(predict), platforms=platforms)(
      param_specs, input_specs)
  try:
    blob = exported.serialize()
  except ImportError as e:  # jax serializes with flatbuffers, not a jax dep
    raise ImportError(f"{e}; pip install 'mtrec-jax[serve]' (flatbuffers, "
                      f"safetensors)") from e
  out.mkdir(parents=True, exist_ok=True)
  (out / FUNCTION_FILE).write_bytes(blob)
  params_file = _save_params(flat, out)
  outputs = jax.tree_util.tree_unflatten(exported.out_tree,
                                         list(exported.out_avals))
  result_path = run.run_dir / "result.json"
  result = run_files.read_json(result_path) if result_path.exists() else {}
  manifest = {
      "format": FORMAT,
      "function": FUNCTION_FILE,
      "params": params_file,
      "call": "jax.export.deserialize(function bytes).call(params, inputs)",
      "batch_dim": BATCH_DIM,
      "inputs": {k: {"dtype": str(np.dtype(d)), "shape": [BATCH_DIM, *s]}
                 for k, (d, s) in run.inputs.items()},
      "outputs": {k: {"dtype": str(v.dtype), "shape": _shape(v.shape)}
                  for k, v in outputs.items()},
      "num_params": len(flat),
      "item_text": run.item_text,
      "platforms": list(exported.platforms),
      "jax_version": jax.__version__,
      "calling_convention_version": exported.calling_convention_version,
      "run": {"run_dir": str(run.run_dir),
              "experiment": result.get("experiment", ""),
              "grid": result.get("grid", {}),
              "config_hash": result.get("config_hash", ""),
              "git": result.get("git", {})},
  }
  run_files.write_json(out / MANIFEST_FILE, manifest)
  return out / MANIFEST_FILE
