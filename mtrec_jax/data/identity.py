"""Dataset identity: a content hash of a dataset's source files.

A run's config names its data (``data.name`` and the parse arguments), but
a real dataset also depends on files outside the config: a census file cut
to 20k rows, or an edited copy brought over with ``cp -p``/``rsync -a``
(same name, size and modification time), is other data under the same
config.  `identity(config)` hashes those files' contents; it is recorded in
every result (``result["data"]``) and is part of a run's identity in the
results store (`Store.claim` compares it), and the prepared ArrayRecord copy
is keyed by it (`builders._prepare`), so changed data is never read from a
stale copy nor taken for a run already done.

Datasets whose rows are a function of the config alone (the synthetic
generators) have no source files: their identity is None, the config hash
covers them.  A dataset with files says how to find them with its
registration flag ``source``: ``@DATASETS.register(name, source=fn)``,
``fn(data kwargs) -> Path`` (a file or a folder).

Cost: hashing reads every byte (SHA-256, about 0.5-1 GB/s a core), so each
file's digest is cached, keyed by its path and (device, inode, size,
modification time, change time).  The change time (ctime) is set by the
kernel on every write, rename onto the path and ``utime`` call and cannot
be set back, so an edit with the mtime restored (``cp -p``, ``rsync -a``,
``touch -d``) changes the key and the file is hashed again; a file whose key
is unchanged is not read.  The cache is one JSON file, ``source_hashes.json``
in $MTREC_CACHE_DIR (default ~/.cache/mtrec_jax), written by rename; when
processes race, one's entries may be lost, which only costs a rehash.
Hashing reads every byte, so it grows with the data; a cached file costs one
``stat``, so a cached identity is orders of magnitude cheaper and does not
grow with the file's size.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile
from typing import Any

CACHE_FILE = "source_hashes.json"
_CHUNK = 1 << 20


def cache_path() -> pathlib.Path:
  root = os.environ.get("MTREC_CACHE_DIR") or "~/.cache/mtrec_jax"
  return pathlib.Path(root).expanduser() / CACHE_FILE


def _stat_key(st: os.stat_result) -> list[int]:
  return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def file_sha256(path: pathlib.Path) -> str:
  """The SHA-256 hex digest of a file's bytes."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK), b""):
      h.update(chunk)
  return h.hexdigest()


def _read_cache() -> dict[str, Any]:
  try:
    data = json.loads(cache_path().read_text())
    return data if isinstance(data, dict) else {}
  except (OSError, ValueError):
    return {}


def _write_cache(cache: dict[str, Any]) -> None:
  path = cache_path()
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
      json.dump(cache, f, sort_keys=True)
    os.replace(tmp, path)
  except OSError:
    pass  # a read-only cache folder: hash again next time


def source_files(source: pathlib.Path) -> list[pathlib.Path]:
  """The files of a source: itself, or every file under a folder, sorted."""
  source = pathlib.Path(source)
  if source.is_dir():
    return sorted(p for p in source.rglob("*") if p.is_file())
  return [source]


def source_hash(source: str | os.PathLike) -> dict[str, Any]:
  """{'hash': 16 hex digits over every file's name and digest, 'files':
  {relative name: sha256}, 'bytes': total size} of a source file or folder;
  a file is read only when its (inode, size, mtime, ctime) key changed."""
  source = pathlib.Path(source).expanduser().resolve()
  files = source_files(source)
  cache = _read_cache()
  changed = False
  digests: dict[str, str] = {}
  total = 0
  for path in files:
    st = path.stat()
    total += st.st_size
    key, entry = str(path), cache.get(str(path))
    if (isinstance(entry, dict) and entry.get("stat") == _stat_key(st)
        and isinstance(entry.get("sha256"), str)):
      digest = entry["sha256"]
    else:
      digest = file_sha256(path)
      st_after = path.stat()  # a file written while it was read: not cached
      if _stat_key(st_after) == _stat_key(st):
        cache[key] = {"stat": _stat_key(st), "sha256": digest}
        changed = True
    name = path.name if path == source else path.relative_to(
        source).as_posix()
    digests[name] = digest
  if changed:
    _write_cache(cache)
  blob = json.dumps(sorted(digests.items()), separators=(",", ":"))
  return {"hash": hashlib.sha256(blob.encode()).hexdigest()[:16],
          "files": digests, "bytes": total}


def identity(config: Any) -> dict[str, Any] | None:
  """The data identity of a run's config: None for data the config alone
  determines, else {'dataset', 'source', 'hash', 'files', 'bytes'} of the
  source files its dataset reads (see the module doc)."""
  from mtrec_jax.registry import DATASETS
  data = config["data"]
  data = data.to_dict() if hasattr(data, "to_dict") else dict(data)
  name = data.pop("name")
  locate = DATASETS.info(name).get("source")
  if locate is None:
    return None
  data.pop("storage", None)
  source = pathlib.Path(locate(data))
  return {"dataset": name, "source": str(source), **source_hash(source)}
