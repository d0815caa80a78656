"""`load_run`: a trained run's model, rebuilt from its folder, ready to predict.

A run folder (`mtrec run` writes WORKDIR/<experiment>/<run name>/) holds
config.json (the resolved config) and params/ (the selected parameters, an
Orbax folder; `train.checkpoints.save_params`).  `load_run` reads both,
rebuilds the dataset, the tasks and the model the way `train.loop.Components`
does (without the strategy and optimizer, which inference never needs), and
checks every saved parameter against the rebuilt model's (path and shape),
so a model whose code changed since the run fails here, naming the
parameter, rather than inside a jitted call.

The stored config is read onto today's `config.base_config()`: keys added
since the run take their defaults (which, by the store's `ADDED_KEYS`
contract, compute what ran before); of the model and aux sections only the
part that could change the run (`config.identity`) is read, so a field
removed from some *other* model does not block loading.  A key that no
longer exists, or a name (model, dataset, auxiliary task, task) that no
longer resolves, is an error naming the key.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import pathlib
from typing import Any, Mapping, Sequence

import jax
import numpy as np

from mtrec_jax import config as config_lib, plugins
from mtrec_jax.registry import CONFIG_SECTIONS, EXPERIMENTS, UnknownNameError
from mtrec_jax.results import run_files

CONFIG_FILE = "config.json"
# Sections whose keys each experiment chooses (data.* are the dataset
# builder's keyword arguments): read whole, checked by what reads them.
OPEN_SECTIONS = ("data",)


def _optional_keys() -> dict[str, Any]:
  """Keys that some experiments' configs hold and `config.base_config()`
  lacks (issue 18's item text, `experiments/ml100k_text.with_text_keys`),
  with the values their absence means: added to the base when a run's
  config has them, so a run without them reads as before."""
  from mtrec_jax.models.item_text import TEXT_DEFAULTS
  return {"model.item_repr": "id", "model.text": dict(TEXT_DEFAULTS),
          "optimizer.text_lr_scale": 1.0}


class RunConfigError(UnknownNameError):
  """A stored run config that no longer resolves (the message names the key)."""


@contextlib.contextmanager
def _resolving(run_dir: pathlib.Path, key: str):
  """Re-raises an unknown name met while building `key` as a
  `RunConfigError` that names the run and the key."""
  try:
    yield
  except UnknownNameError as e:
    raise RunConfigError(
        f"run {str(run_dir)!r}: config key {key!r} no longer resolves: {e} "
        f"(the run was trained by a version of mtrec-jax that had it; see "
        f"result.json's git commit)") from e


def _leaves(base: config_lib.ConfigDict, stored: Mapping[str, Any],
            prefix: str = "") -> dict[str, Any]:
  """Dotted overrides from a stored config, descending as far as `base`
  has non-empty sections (an empty one, e.g. strategy.hparams or
  model.task_inputs, and the `OPEN_SECTIONS` take the stored dict whole)."""
  out: dict[str, Any] = {}
  for k, v in stored.items():
    node = base[k] if isinstance(base, config_lib.ConfigDict) and k in base \
        else None
    if isinstance(v, dict) and isinstance(node, config_lib.ConfigDict) \
        and len(node) and f"{prefix}{k}" not in OPEN_SECTIONS:
      out.update(_leaves(node, v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_from_json(stored: Mapping[str, Any], run_dir: pathlib.Path
                     ) -> config_lib.ConfigDict:
  """A run's config.json -> today's ConfigDict for it (see the module
  docstring); unknown keys and names raise `RunConfigError`."""
  stored = json_copy(stored)
  for name in CONFIG_SECTIONS.names():
    if isinstance(stored.get(name), dict):
      with _resolving(run_dir, f"{name}.name" if name == "model" else name):
        stored[name] = CONFIG_SECTIONS.get(name).identity(stored[name], stored)
  base = config_lib.base_config()
  for key, default in _optional_keys().items():
    section, leaf = key.split(".")
    if isinstance(stored.get(section), dict) and leaf in stored[section] \
        and leaf not in base[section]:
      base[section][leaf] = (config_lib.ConfigDict(default)
                             if isinstance(default, dict) else default)
  overrides = _leaves(base, stored)
  try:
    return config_lib.apply_overrides(base, overrides)
  except UnknownNameError as e:
    raise RunConfigError(
        f"run {str(run_dir)!r}: its config.json no longer resolves: {e} (the "
        f"run was trained by a version of mtrec-jax that had that key; see "
        f"result.json's git commit)") from e


def json_copy(x: Any) -> Any:
  if isinstance(x, Mapping):
    return {str(k): json_copy(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [json_copy(v) for v in x]
  return x


def _runs_for(experiment: str, where: Mapping[str, Any] | None, seed: int,
              overrides) -> tuple:
  from mtrec_jax import experiment as experiment_lib
  exp = experiment_lib.get_experiment(experiment)
  only = {str(k): [str(v) for v in (vs if isinstance(vs, (list, tuple))
                                    else [vs])]
          for k, vs in dict(where or {}).items()}
  return exp, exp.runs(overrides=overrides or (), seeds=(int(seed),),
                       only=only)


def find_run_dir(run: str | pathlib.Path, *, where=None, seed: int = 0,
                 store=None, workdir: str | pathlib.Path | None = None,
                 overrides=()) -> pathlib.Path:
  """The folder of `run`: a run folder (or its params/), or the one grid
  point of experiment `run` that `where` ({axis: value}) and `seed` pick,
  found through the results store (its recorded params_dir) or else under
  `workdir`/<experiment>/."""
  path = pathlib.Path(run).expanduser()
  if path.name == "params" and (path.parent / CONFIG_FILE).exists():
    path = path.parent
  if not path.exists() and any(path.parent.glob(f"{glob.escape(path.name)}@*")):
    from mtrec_jax.train import checkpoints  # a grid point's one run folder
    path = checkpoints.params_dir(path).parent
  if (path / CONFIG_FILE).is_file():
    return path.resolve()
  if path.exists():
    raise FileNotFoundError(f"{str(path)!r} holds no {CONFIG_FILE}; give a "
                            f"run folder (WORKDIR/<experiment>/<run>/)")
  if str(run) not in EXPERIMENTS and not plugins.is_spec(str(run)):
    raise FileNotFoundError(
        f"{str(run)!r} is neither a run folder (with {CONFIG_FILE}) nor a "
        f"registered experiment; give a path to a run folder, or an "
        f"experiment name (see `mtrec list`) with where= / --where")
  exp, runs = _runs_for(str(run), where, seed, overrides)
  if len(runs) != 1:
    names = ", ".join(r.name for r in runs) or "none"
    axes = ", ".join(a.name for a in exp.axes)
    raise ValueError(f"experiment {exp.name!r}: where={dict(where or {})} "
                     f"seed={seed} picks {len(runs)} runs ({names}); give one "
                     f"value for each axis ({axes})")
  (point,) = runs
  want = config_lib.config_hash(point.config)
  candidates = []
  from mtrec_jax.results import store as store_lib
  store_path = store_lib.check_store_path(
      store if store is not None else store_lib.default_store_path())
  if store_lib.store_exists(store_path):
    with store_lib.Store(store_path) as db:
      for res in reversed(db.results(exp.name)):
        if (res.get("config_hash") == want and res.get("seed") == int(seed)
            and res.get("status") == "done" and res.get("params_dir")):
          candidates.append(pathlib.Path(res["params_dir"]).parent)
  root = pathlib.Path(workdir if workdir is not None else "runs") / exp.name
  candidates += [root / point.dir_name, root / point.name]
  for folder in candidates:
    if (folder / CONFIG_FILE).is_file() and (folder / "params").is_dir():
      return folder.resolve()
  raise FileNotFoundError(
      f"experiment {exp.name!r} run {point.name!r} (config hash {want}): no "
      f"finished run in the store {str(store_path)!r} and no run folder at "
      f"{' or '.join(repr(str(c)) for c in candidates[-2:])}; train it "
      f"(`mtrec run {exp.name}`) or pass store= / workdir=")


class _Recorder(dict):
  """A batch that records which columns the model reads (while tracing)."""

  def __init__(self, *args):
    super().__init__(*args)
    self.read: set[str] = set()

  def __getitem__(self, key):
    self.read.add(key)
    return super().__getitem__(key)

  def get(self, key, default=None):
    if key in self:
      self.read.add(key)
    return super().get(key, default)

  def items(self):
    self.read.update(self.keys())
    return super().items()

  def values(self):
    self.read.update(self.keys())
    return super().values()


def prediction_function(model, tasks: Sequence):
  """``(params, batch) -> {task: prediction}``: the dataset tasks' and the
  ranking auxiliary tasks' predictions, as `train.evaluate.make_predict_fn`
  computes them (without the losses, which need labels)."""
  aux_eval = tuple(t.eval_task for t in getattr(model, "aux_tasks", ())
                   if t.eval_task is not None)

  def predict(params, batch):
    out = model.apply({"params": params}, batch, train=False)
    preds = {t.name: t.predict(out[t.name]) for t in tasks}
    if aux_eval:
      scores = model.apply({"params": params}, batch, method="aux_scores")
      preds.update({t.name: t.predict(scores[t.name]) for t in aux_eval})
    return preds

  return predict


def flat_params(params) -> dict[str, np.ndarray]:
  """{'a/b/c': array} for a parameter tree (the export's file layout)."""
  return {"/".join(str(getattr(k, "key", k)) for k in keys): np.asarray(leaf)
          for keys, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}


@dataclasses.dataclass
class LoadedRun:
  """A trained run, ready to predict.

  Attributes:
    run_dir: the run folder.
    config: its config (today's `ConfigDict` for it).
    dataset: the run's dataset (rebuilt; its splits give user histories).
    model: the `MultiTaskModel`.
    tasks: the dataset tasks the run trained; `eval_tasks` adds the
      auxiliary tasks that predict (e.g. next_all), as evaluation does.
    aux_tasks: the run's auxiliary tasks (`tasks.auxiliary`).
    params: the selected parameters.
    inputs: {column: (dtype, shape without the batch dimension)}, the
      columns `predict` reads.
    item_text: for a run trained with item text, what it was and how it is
      served (`serve.item_text.describe`); None without.  A fine-tuned
      run's `model` and `params` are its serving form: the frozen-text
      model over the fine-tuned encoder's outputs, without the encoder's
      parameters (`serve.item_text.for_serving`).
  """
  run_dir: pathlib.Path
  config: config_lib.ConfigDict = dataclasses.field(repr=False)
  dataset: Any = dataclasses.field(repr=False)
  model: Any = dataclasses.field(repr=False)
  tasks: tuple = dataclasses.field(repr=False)
  aux_tasks: tuple = dataclasses.field(repr=False)
  params: Any = dataclasses.field(repr=False)
  inputs: dict[str, tuple[np.dtype, tuple[int, ...]]]
  item_text: dict[str, Any] | None = None

  def __post_init__(self):
    self.predict_fn = prediction_function(self.model, self.tasks)
    self._jitted = jax.jit(self.predict_fn)

  @property
  def eval_tasks(self) -> tuple:
    return self.tasks + tuple(t.eval_task for t in self.aux_tasks
                              if t.eval_task is not None)

  def model_inputs(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The columns of `batch` that the model reads, checked and cast."""
    missing = [c for c in self.inputs if c not in batch]
    if missing:
      raise ValueError(f"the batch lacks the model's input columns "
                       f"{missing}; it needs {sorted(self.inputs)} (dtypes "
                       f"and shapes: LoadedRun.inputs)")
    out = {}
    for name, (dtype, shape) in self.inputs.items():
      value = np.asarray(batch[name])
      if value.shape[1:] != shape:
        raise ValueError(f"input column {name!r} has shape {value.shape}; "
                         f"the model reads [batch, {', '.join(map(str, shape))}]"
                         if shape else f"input column {name!r} has shape "
                         f"{value.shape}; the model reads [batch]")
      out[name] = value.astype(dtype, copy=False)
    return out

  def predict(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """{task: prediction} (probabilities, or values for regression) for
    every dataset task of the run and every auxiliary task that predicts
    (next_all: [B, num_items + 1] next-item probabilities), jitted."""
    out = self._jitted(self.params, self.model_inputs(batch))
    return {k: np.asarray(v) for k, v in out.items()}

  def score(self, batch: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Candidate scoring for the tabular rankers (e.g. census): the
    predictions for each row of `batch`, as `predict`."""
    return self.predict(batch)

  def item_embeddings(self, feature: str | None = None) -> np.ndarray:
    """[num_items + 1, E] float32: the item table the model scores with
    (row 0 is padding); `feature` defaults to the ranking task's item
    sequence feature."""
    from mtrec_jax.serve import recommend as rec
    name = feature or rec.item_feature(self, rec.ranking_task(self).name)
    return np.asarray(self.model.apply({"params": self.params}, name,
                                       method="embedding_table"))

  def recommend(self, user: int | None = None, history=None, k: int = 10,
                exclude_seen: bool = True, task: str | None = None):
    """Top-k items for a user id or a raw history; see
    `serve.recommend.recommend`."""
    from mtrec_jax.serve import recommend as rec
    return rec.recommend(self, user=user, history=history, k=k,
                         exclude_seen=exclude_seen, task=task)


def load_run(run: str | pathlib.Path, *, where: Mapping[str, Any] | None = None,
             seed: int = 0, store=None, workdir=None, overrides=(),
             data: Mapping[str, Any] | None = None,
             text_model_dir: str | pathlib.Path | None = None) -> LoadedRun:
  """Loads a trained run: a run folder, or experiment `run`'s grid point
  `where` ({axis: value}) at `seed` (see `find_run_dir`).

  `data` overrides data.* keys (e.g. {"data_dir": ...} for a run trained
  where the data lay elsewhere); `text_model_dir`, for a run trained with
  item text, the folder of its text model (model.text.model_dir; see
  `serve.item_text`); nothing else of the config can change.
  """
  from mtrec_jax.models.build import build_model
  from mtrec_jax.serve import item_text as serve_text
  from mtrec_jax.tasks.auxiliary import build_aux_tasks
  from mtrec_jax.train import checkpoints
  from mtrec_jax.train.loop import load_dataset, select_tasks

  run_dir = find_run_dir(run, where=where, seed=seed, store=store,
                         workdir=workdir, overrides=overrides)
  config = config_from_json(run_files.read_json(run_dir / CONFIG_FILE),
                            run_dir)
  if data:
    config = config_lib.apply_overrides(
        config, {f"data.{k}": v for k, v in dict(data).items()})
  if text_model_dir is not None:
    if config.model.get("item_repr", "id") == "id":
      raise ValueError(f"run {str(run_dir)!r} has no item text "
                       f"(model.item_repr is 'id'); drop text_model_dir / "
                       f"--text-model-dir")
    config = config_lib.apply_overrides(
        config, {"model.text.model_dir": str(text_model_dir)})
  with _resolving(run_dir, "data.name"):
    dataset = load_dataset(config)
  text = serve_text.item_text(config, dataset, run_dir)
  aux_cfg = config_lib.to_dict(config.aux)
  with _resolving(run_dir, "aux.tasks"):
    aux_tasks = build_aux_tasks(aux_cfg, dataset,
                                config_lib.to_dict(config.model))
  with _resolving(run_dir, "tasks"):
    tasks = () if aux_cfg["only"] else select_tasks(dataset,
                                                    tuple(config.tasks))
  with _resolving(run_dir, "model.name"):
    model = build_model(config.model, dataset.features,
                        tuple((t.name, t.out_dim) for t in tasks), aux_tasks,
                        text)
  sample = {k: v[:2] for k, v in dataset.splits["test"].items()}
  params = _checked_params(run_dir, model, sample, bool(aux_tasks),
                           checkpoints.load_params(run_dir))
  trained_text = model.item_text
  model, params = serve_text.for_serving(model, params)
  recorder = _Recorder(sample)
  jax.eval_shape(lambda p: prediction_function(model, tasks)(p, recorder),
                 params)
  inputs = {name: (sample[name].dtype, tuple(sample[name].shape[1:]))
            for name in sorted(recorder.read)}
  return LoadedRun(run_dir, config, dataset, model, tuple(tasks),
                   tuple(aux_tasks), params, inputs,
                   serve_text.describe(trained_text, model.item_text))


def _checked_params(run_dir, model, sample, with_aux: bool, loaded):
  """`loaded` as the model's parameter tree; a missing, extra or
  differently shaped parameter is an error naming it."""
  key = jax.random.PRNGKey(0)
  if with_aux:
    shapes = jax.eval_shape(lambda: model.init(
        {"params": key, "dropout": key}, sample, key,
        method="init_all"))["params"]
  else:
    shapes = jax.eval_shape(lambda: model.init(
        {"params": key, "dropout": key}, sample, train=False))["params"]
  want, got = flat_params_shapes(shapes), flat_params(loaded)
  for name in sorted(set(want) | set(got)):
    if name not in got or name not in want or \
        tuple(got[name].shape) != want[name][0]:
      raise ValueError(
          f"run {str(run_dir)!r}: saved parameter {name!r} "
          f"({'missing' if name not in got else list(got[name].shape)}) does "
          f"not match the model its config builds today "
          f"({'no such parameter' if name not in want else list(want[name][0])})"
          f"; the model code changed since the run (see result.json's git "
          f"commit)")
  return jax.tree_util.tree_map_with_path(
      lambda keys, s: jax.numpy.asarray(
          got["/".join(str(getattr(k, "key", k)) for k in keys)], s.dtype),
      shapes)


def flat_params_shapes(tree) -> dict[str, tuple[tuple[int, ...], Any]]:
  return {"/".join(str(getattr(k, "key", k)) for k in keys):
          (tuple(leaf.shape), leaf.dtype)
          for keys, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
