"""Artifacts on disk: atomic writes, fingerprints, and the one error type users see.

Every file a job writes goes through `atomic_write_*` (temp file in the same folder, then
`os.replace`), so a killed job never leaves a half-written artifact behind. Every artifact
records a fingerprint of its inputs; `check_fingerprint` refuses mismatched inputs with a
message that names the file and what differs.
"""

import contextlib
import hashlib
import json
import os
import tempfile
from typing import Any, Iterator, Mapping

import numpy as np


class UserError(Exception):
  """Bad input from the user: main.py prints the message on one line and exits non-zero."""


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path next to `path`; renames it onto `path` if the block succeeds."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp-', suffix=os.path.basename(path))
  os.close(fd)
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def atomic_write_json(path: str, obj: Any) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, 'w') as f:
      json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
      f.write('\n')


def atomic_write_npz(path: str, **arrays: np.ndarray) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, 'wb') as f:
      np.savez(f, **arrays)


def atomic_write_npy(path: str, array: np.ndarray) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, 'wb') as f:
      np.save(f, array)


def read_json(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise UserError(f'{path} does not exist') from None
  except json.JSONDecodeError as e:
    raise UserError(f'{path} is not valid JSON ({e})') from None


def _json_default(obj: Any) -> Any:
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  if hasattr(obj, 'to_dict'):  # ml_collections.ConfigDict
    return obj.to_dict()
  raise TypeError(f'cannot serialise {type(obj).__name__} to JSON')


def fingerprint(inputs: Mapping[str, Any]) -> str:
  """A short stable hash of a JSON-serialisable description of an artifact's inputs."""
  canonical = json.dumps(inputs, sort_keys=True, default=_json_default)
  return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def array_fingerprint(tree: Any) -> str:
  """Hash of the bytes of every array leaf of a pytree (e.g. checkpoint params), in order."""
  import jax  # local: keeps this module importable without initialising jax.
  h = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(tree):
    a = np.asarray(leaf)
    h.update(str((a.dtype, a.shape)).encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()[:16]


def check_fingerprint(path: str, expected: str, found: str, what: str) -> None:
  """Raises UserError when an artifact at `path` was made from other inputs than expected."""
  if expected != found:
    raise UserError(
        f'{path}: {what} fingerprint mismatch (artifact has {found}, this run expects '
        f'{expected}); it was made from other inputs. Use a new --workdir or remove it.')


def finished_or_start(done_path: str, started_path: str, expected: str,
                      inputs: Mapping[str, Any], what: str) -> dict | None:
  """The resumable-job handshake every job does before it works.

  Returns the finished record at `done_path` (refused if made from other inputs), or None
  after checking that work already started in this folder came from the same inputs (or, on
  host 0, recording at `started_path` that it starts now).
  """
  if os.path.exists(done_path):
    record = read_json(done_path)
    check_fingerprint(done_path, expected, record['fingerprint'], what)
    return record
  if os.path.exists(started_path):
    check_fingerprint(started_path, expected, read_json(started_path)['fingerprint'], what)
  else:
    import jax  # local: keeps this module importable without initialising jax.
    if jax.process_index() == 0:
      atomic_write_json(started_path, {'fingerprint': expected, 'inputs': inputs})
  return None


def ensure_writable_dir(path: str) -> None:
  """Creates `path` if needed; a clear UserError when it cannot be written."""
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise UserError(f'workdir {path} cannot be created ({e.strerror})') from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise UserError(f'workdir {path} is not writable')
