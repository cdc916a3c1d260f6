"""Artifacts on disk: atomic writes, fingerprints, integrity records and folder locks.

Every file a job writes goes through `atomic_write_*` (temp file in the same folder, then
`os.replace`), so a killed job never leaves a half-written artifact behind; files get the
permissions the umask allows, so a team can share a workdir. Every artifact records a
fingerprint of its inputs; `check_fingerprint` refuses mismatched inputs with a ValueError
that names the file and what differs. A finished artifact also records the size and checksum
of each of its files (`describe_files`), and readers check them (`verify_files`) before use,
so a truncated or swapped file is found before it is trusted. A job holds `exclusive(folder)`
while it writes a folder, so a second run on the same folder refuses instead of racing.
"""

import contextlib
import fcntl
import hashlib
import io
import json
import os
import tempfile
from typing import Any, Iterator, Mapping
import zipfile

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


# mkstemp makes files 0600 whatever the umask; artifacts get what the umask allows.
_FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path next to `path`; renames it onto `path` if the block succeeds."""
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix='.tmp-', suffix=os.path.basename(path))
  os.fchmod(fd, _FILE_MODE)
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
  """np.savez's format without its timestamps: the same arrays always give the same bytes,
  so a file rebuilt from its parts has the checksum recorded when it was first written."""
  with atomic_path(path) as tmp, zipfile.ZipFile(tmp, 'w') as archive:
    for name, array in arrays.items():
      buffer = io.BytesIO()
      np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
      archive.writestr(zipfile.ZipInfo(f'{name}.npy'), buffer.getvalue())  # 1980-01-01


def atomic_write_npy(path: str, array: np.ndarray) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, 'wb') as f:
      np.save(f, array)


def read_json(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise FileNotFoundError(f'{path} does not exist') from None
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not valid JSON ({e})') from None


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


def file_fingerprint(path: str) -> str:
  """Hash of a file's bytes (e.g. published weights, a reference batch), read in blocks."""
  try:
    with open(path, 'rb') as f:
      return hashlib.file_digest(f, 'sha256').hexdigest()[:16]
  except FileNotFoundError:
    raise FileNotFoundError(f'{path} does not exist') from None


def describe_files(folder: str, names) -> dict[str, dict[str, Any]]:
  """{name: {'size', 'sha256'}} of files `names` of `folder`: what a finished artifact
  records so that readers can tell its files are whole and its own."""
  described = {}
  for name in names:
    path = os.path.join(folder, name)
    described[name] = {'size': os.path.getsize(path), 'sha256': file_fingerprint(path)}
  return described


def damaged_files(folder: str, described: Mapping[str, Mapping[str, Any]],
                  checksums: bool = True) -> dict[str, str]:
  """{name: what is wrong} for the described files of `folder` that are missing, of another
  size or (with `checksums`) of other content; empty when all are whole."""
  damaged = {}
  for name, expected in described.items():
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
      damaged[name] = 'is missing'
    elif os.path.getsize(path) != expected['size']:
      damaged[name] = f'has {os.path.getsize(path)} bytes, not the {expected["size"]} written'
    elif checksums and file_fingerprint(path) != expected['sha256']:
      damaged[name] = (f'has content {file_fingerprint(path)}, not the {expected["sha256"]} '
                       'written (replaced or modified since)')
  return damaged


def damaged_on_rerun(folder: str, described: Mapping[str, Mapping[str, Any]],
                     what: str) -> dict[str, str]:
  """`damaged_files` of a finished artifact that a job meets again, logged: a skip when all
  are whole, else a warning naming each damaged file (which the caller then redoes)."""
  damaged = damaged_files(folder, described)
  if damaged:
    logging.warning('%s %s is damaged (%s); redoing it', what, folder,
                    '; '.join(f'{name} {problem}' for name, problem in damaged.items()))
  else:
    logging.info('%s %s already complete; skipping.', what, folder)
  return damaged


def remove_files(folder: str, names) -> None:
  """Host 0 removes the files `names` of `folder` (missing ones are fine); all hosts wait."""
  if jax.process_index() == 0:
    for name in names:
      with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(folder, name))
  multihost_utils.sync_global_devices(f'removed files of {folder}')


def verify_files(folder: str, described: Mapping[str, Mapping[str, Any]], what: str,
                 checksums: bool = True) -> None:
  """A ValueError naming the first damaged file of `folder` (see `damaged_files`)."""
  damaged = damaged_files(folder, described, checksums)
  if damaged:
    name, problem = next(iter(damaged.items()))
    raise ValueError(f'{what}: {os.path.join(folder, name)} {problem}; remove the folder '
                     'or run the job that writes it again')


@contextlib.contextmanager
def exclusive(folder: str) -> Iterator[None]:
  """Holds an exclusive lock on `folder` (its .lock file) for the block; a BlockingIOError
  naming the folder when another process holds it. Process 0 alone locks: the other hosts
  of a multi-host run write nothing that races."""
  if jax.process_index() != 0:
    yield
    return
  ensure_writable_dir(folder, 'folder')
  with open(os.path.join(folder, '.lock'), 'a') as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise BlockingIOError(f'{folder} is being written by another run; wait for it to '
                            'finish or use another --workdir') from None
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def array_fingerprint(tree: Any) -> str:
  """Hash of the bytes of every array leaf of a pytree (e.g. checkpoint params), in order."""
  h = hashlib.sha256()
  for leaf in jax.tree_util.tree_leaves(tree):
    a = np.asarray(leaf)
    h.update(str((a.dtype, a.shape)).encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()[:16]


def check_fingerprint(path: str, expected: str, found: str, what: str) -> None:
  """Raises ValueError when an artifact at `path` was made from other inputs than expected."""
  if expected != found:
    raise ValueError(
        f'{path}: {what} fingerprint mismatch (artifact has {found}, this run expects '
        f'{expected}); it was made from other inputs. Use a new --workdir or remove it.')


def finished_or_start(done_path: str, started_path: str, expected: str,
                      inputs: Mapping[str, Any], what: str,
                      work_dir: str | None = None) -> dict | None:
  """The resumable-job handshake every job does before it works.

  Returns the finished record at `done_path` (refused if made from other inputs), or None
  after checking that work already started in this folder came from the same inputs (or, on
  host 0, recording at `started_path` that it starts now). Work is what `work_dir` (default:
  the folder of `started_path`) holds besides that record, the lock and temporary files: a
  try that failed before doing any binds the folder to nothing, so a run with other inputs
  starts afresh instead of being refused.
  """
  if os.path.exists(done_path):
    record = read_json(done_path)
    check_fingerprint(done_path, expected, record['fingerprint'], what)
    return record
  if os.path.exists(started_path):
    found = read_json(started_path)['fingerprint']
    if found == expected:
      return None
    if _holds_work(work_dir or os.path.dirname(started_path), started_path):
      check_fingerprint(started_path, expected, found, what)
    logging.info('%s: the try with other inputs left no work; starting afresh', started_path)
  if jax.process_index() == 0:
    atomic_write_json(started_path, {'fingerprint': expected, 'inputs': inputs})
  return None


def _holds_work(folder: str, started_path: str) -> bool:
  """Whether `folder` holds anything a job made besides its record of having started."""
  if not os.path.isdir(folder):
    return False
  bookkeeping = {os.path.basename(started_path), '.lock'}
  return any(name not in bookkeeping and not name.startswith('.tmp-')
             for name in os.listdir(folder))


def ensure_writable_dir(path: str, what: str = 'workdir') -> None:
  """Creates `path` if needed; a PermissionError naming it (`what` says what it is) when it
  cannot be written."""
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise PermissionError(f'{what} {path} cannot be created ({e.strerror})') from None
  if not os.access(path, os.W_OK | os.X_OK):
    raise PermissionError(f'{what} {path} is not writable')
