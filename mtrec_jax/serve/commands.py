"""`mtrec recommend` and `mtrec export-model`: parsing and printing.

    mtrec recommend RUN --user 42 [-k 10] [--include-seen] [--task T]
    mtrec recommend RUN --history 50,172,133 [-k 10]
    mtrec recommend RUN --input users.txt [--output recs.jsonl]
    mtrec export-model RUN --out DIR [--platforms cpu,cuda]

RUN is a run folder (WORKDIR/<experiment>/<run>/), or an experiment name
with --where AXIS=VALUE for each axis and --seed (found through --store,
else under --workdir).  --input lines are a user id, a JSON list of item
ids (a history, oldest first) or a JSON object with "user" and/or
"history" (other keys are copied to the output); the output has one JSON
object per line, with "items", "scores" and, for MovieLens, "titles".
`cli.py` registers these through `add_commands`; the work is in
`serve.load`, `serve.recommend` and `serve.export`.
"""
from __future__ import annotations

import json
import pathlib
import sys
from typing import Any


def _where(items) -> dict[str, str]:
  out = {}
  for item in items or ():
    if "=" not in item:
      raise ValueError(f"--where {item!r}: write axis=value (e.g. --where "
                       f"tasks=next_item)")
    axis, value = item.split("=", 1)
    out[axis.strip()] = value.strip()
  return out


def _run_arguments(sp) -> None:
  sp.add_argument("run", help="a run folder, or an experiment name (then "
                  "--where picks its grid point)")
  sp.add_argument("--where", action="append", metavar="AXIS=VALUE",
                  help="the grid point of an experiment RUN (repeatable)")
  sp.add_argument("--seed", type=int, default=0,
                  help="the seed of an experiment RUN (default 0)")
  sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                  help="the overrides the experiment RUN was made with")
  sp.add_argument("--workdir", default="runs",
                  help="where to look for an experiment RUN's folder when "
                       "the store has none (default: ./runs)")
  sp.add_argument("--data-dir", help="the dataset's source folder, when it "
                  "is no longer where the run was trained (data.data_dir)")
  sp.add_argument("--text-model-dir", help="for a run trained with item "
                  "text: its text model's folder, when it is no longer where "
                  "the run found it (model.text.model_dir)")


def _load(args):
  from mtrec_jax.serve.load import load_run
  return load_run(args.run, where=_where(args.where), seed=args.seed,
                  store=args.store, workdir=args.workdir,
                  overrides=args.set or (),
                  data={"data_dir": args.data_dir} if args.data_dir else None,
                  text_model_dir=args.text_model_dir)


def read_requests(path: pathlib.Path) -> list[dict[str, Any]]:
  """The requests of an --input file (see the module docstring)."""
  out = []
  for lineno, line in enumerate(pathlib.Path(path).read_text().splitlines(),
                                1):
    if not line.strip():
      continue
    try:
      value = json.loads(line)
    except json.JSONDecodeError:
      value = None
    if isinstance(value, int) and not isinstance(value, bool):
      value = {"user": value}
    elif isinstance(value, list):
      value = {"history": value}
    if not isinstance(value, dict) or not ({"user", "history"} & set(value)):
      raise ValueError(f"{path}:{lineno}: write a user id, a JSON list of "
                       f"item ids, or a JSON object with \"user\" and/or "
                       f"\"history\"; got {line.strip()[:80]!r}")
    out.append(value)
  return out


def cmd_recommend(args) -> int:
  from mtrec_jax.serve import recommend as rec
  given = [args.user is not None, args.history is not None,
           args.input is not None]
  if sum(given) != 1:
    raise ValueError("give one of --user ID, --history ID,ID,... or "
                     "--input FILE")
  if args.output and args.input is None:
    raise ValueError("--output goes with --input (one user prints a list)")
  run = _load(args)
  titles = rec.item_titles(run)
  if args.input is not None:
    requests = read_requests(args.input)
    found = rec.recommend_many(
        run, [{"user": r.get("user"), "history": r.get("history")}
              for r in requests], args.k, not args.include_seen, args.task,
        args.batch_size)
    out = open(args.output, "w") if args.output else sys.stdout
    try:
      for r, f in zip(requests, found):
        line = {**r, **f}
        if titles is not None:
          line["titles"] = [titles[i] for i in f["items"]]
        out.write(json.dumps(line) + "\n")
    finally:
      if args.output:
        out.close()
    if args.output:
      print(f"wrote {len(found)} recommendation lists to {args.output}",
            file=sys.stderr)
    return 0
  history = None
  if args.history is not None:
    history = [int(x) for x in args.history.split(",") if x.strip()]
  task = rec.ranking_task(run, args.task)
  found = rec.recommend(run, user=args.user, history=history, k=args.k,
                        exclude_seen=not args.include_seen, task=task.name)
  who = f"user {args.user}" if args.user is not None else "the history"
  seen = len(rec.input_row(run, args.user, history, task.name)[1])
  print(f"top {args.k} {'unseen ' if not args.include_seen else ''}items "
        f"for {who} ({seen} interactions), by {task.name} of {run.run_dir}:")
  for rank, (item, score) in enumerate(zip(found["items"], found["scores"]),
                                       1):
    title = f"  {titles[item]}" if titles is not None else ""
    print(f"{rank:>3}. {item:>6}  {score:.4g}{title}")
  return 0


def cmd_export_model(args) -> int:
  from mtrec_jax.serve.export import export_model
  platforms = None
  if args.platforms:
    platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
  manifest = export_model(_load(args), args.out, platforms=platforms)
  info = json.loads(manifest.read_text())
  print(f"exported to {args.out}: {info['function']} (platforms "
        f"{', '.join(info['platforms'])}; inputs "
        f"{', '.join(info['inputs'])}; outputs {', '.join(info['outputs'])}),"
        f" {info['params']} ({info['num_params']} arrays), {manifest.name}")
  return 0


def add_commands(command) -> None:
  """Adds the subcommands through `cli.build_parser`'s `command` helper."""
  r = command("recommend", cmd_recommend, "top-k unseen items for a user, a "
              "history or a file of them, from a trained run", store=True)
  _run_arguments(r)
  r.add_argument("--user", type=int, help="a user id of the run's dataset")
  r.add_argument("--history", metavar="ID,ID,...",
                 help="item ids, oldest first (instead of --user)")
  r.add_argument("--input", type=pathlib.Path, metavar="FILE",
                 help="one request a line: a user id, a JSON list of item "
                      "ids, or {\"user\": ..., \"history\": [...]}")
  r.add_argument("--output", metavar="FILE",
                 help="JSON lines for --input (default: stdout)")
  r.add_argument("-k", type=int, default=10, help="how many (default 10)")
  r.add_argument("--include-seen", action="store_true",
                 help="also rank the items in the history")
  r.add_argument("--task", help="the next-item task to rank by (default: "
                 "the run's only one)")
  r.add_argument("--batch-size", type=int, default=256,
                 help="rows per jitted call with --input (default 256)")
  e = command("export-model", cmd_export_model, "write a run's prediction "
              "function (jax.export StableHLO) and parameters for serving",
              store=True)
  _run_arguments(e)
  e.add_argument("--out", required=True, metavar="DIR",
                 help="the folder to write (created)")
  e.add_argument("--platforms", metavar="P,...",
                 help="lower for these platforms, e.g. cpu,cuda (default: "
                      "this machine's backend)")
