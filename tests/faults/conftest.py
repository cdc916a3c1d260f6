"""Fault injection on a finished run: each probe damages a copy of a finished smoke pipeline
(configs/digits.py:smoke=True) or feeds it bad input, and asserts how the jobs answer."""

import os
import shutil
import subprocess
import sys

import pytest

from gadc_jax import jobs
from tests.conftest import REPO, digits_config


@pytest.fixture(scope='session')
def finished_run(tmp_path_factory, tfds_dir):
  """(config, workdir) of a finished smoke pipeline; read-only: probes work on copies."""
  config = digits_config(tfds_dir, 'smoke=True')
  workdir = str(tmp_path_factory.mktemp('finished'))
  jobs.run('pipeline', config, workdir)
  return config, workdir


@pytest.fixture
def run_copy(finished_run, tmp_path):
  """(config, workdir): a fresh config and a private copy of the finished run."""
  config, workdir = finished_run
  copy = str(tmp_path / 'run')
  shutil.copytree(workdir, copy)
  return config.copy_and_resolve_references(), copy


def snapshot(workdir: str) -> dict[str, tuple[int, int]]:
  """{relative path: (size, mtime_ns)} of every file under workdir: what a probe may not
  have rewritten."""
  found = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      st = os.stat(path)
      found[os.path.relpath(path, workdir)] = (st.st_size, st.st_mtime_ns)
  return found


def main(workdir: str, tfds_dir: str, *overrides: str, config: str = 'configs/digits.py:smoke=True'):
  """main.py in a subprocess on `workdir` (the smoke config and the private TFDS dir)."""
  cmd = [sys.executable, 'main.py', f'--config={config}', f'--workdir={workdir}',
         f'--config.data.data_dir={tfds_dir}', *overrides]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=900)


def one_error_line(result, prefix: str = 'error: ') -> str:
  """The single `error:` (or `stopped:`) line of a main.py run; no traceback anywhere."""
  lines = [l for l in result.stderr.splitlines() if l.startswith(prefix)]
  assert len(lines) == 1, result.stderr[-3000:]
  assert 'Traceback' not in result.stderr, result.stderr[-3000:]
  return lines[0]
