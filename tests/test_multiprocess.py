"""Two processes (jax.distributed on localhost, 2 CPU devices each) give one process's artifacts.

The smoke pipeline of configs/digits.py runs through main.py once as one process with 4 CPU
devices and once as processes 0 and 1 of a 2-process run (--multihost --coordinator_address);
every stage's artifacts are compared: the classifiers and features exactly, the selection's
indices exactly, the EMA parameters and the samples to float tolerance (the devices reduce
in another order), the metrics closely.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO

_TIMEOUT_S = 900
_STAGES = "--config.stages=('train_classifier','features','select','train','sample','evaluate')"


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _main(workdir: str, data_dir: str, devices: int, *flags: str) -> subprocess.Popen:
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env.update(JAX_PLATFORMS='cpu', XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')
  return subprocess.Popen(
      [sys.executable, 'main.py', '--config=configs/digits.py:smoke=True', f'--workdir={workdir}',
       f'--config.data.data_dir={data_dir}', _STAGES, *flags],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(procs: list[subprocess.Popen]) -> None:
  try:
    outs = [p.communicate(timeout=_TIMEOUT_S)[0] for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    pytest.fail(f'no end within {_TIMEOUT_S} s: {[p.communicate()[0][-2000:] for p in procs]}')
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-4000:]


@pytest.fixture(scope='module')
def runs(tmp_path_factory, tfds_dir):
  """(workdir of one process, workdir of two processes)."""
  one, two = (str(tmp_path_factory.mktemp(name)) for name in ('one_process', 'two_processes'))
  _finish([_main(one, tfds_dir, 4)])
  address = f'127.0.0.1:{_free_port()}'
  _finish([_main(two, tfds_dir, 2, '--multihost', f'--coordinator_address={address}',
                 '--num_processes=2', f'--process_id={i}') for i in range(2)])
  return one, two


def _arrays(path: str) -> dict[str, np.ndarray]:
  with np.load(path) as data:
    return {k: data[k] for k in data.files}


def _files(root: str, name: str) -> list[str]:
  found = sorted(os.path.relpath(os.path.join(d, f), root)
                 for d, _, files in os.walk(root) for f in files if f == name)
  assert found, f'no {name} under {root}'
  return found


def test_classifiers_features_and_selection_are_the_same(runs):
  one, _ = runs
  for rel in _files(one, 'classifier.json'):
    records = [json.load(open(os.path.join(w, rel))) for w in runs]
    assert records[0]['params_fingerprint'] == records[1]['params_fingerprint'], rel
  stores = [rel for rel in _files(one, 'manifest.json') if rel.startswith('features')]
  assert len(stores) == 2
  for rel in stores:
    folder = os.path.dirname(rel)
    for name in sorted(os.listdir(os.path.join(one, folder))):
      if name.endswith('.npy'):
        a, b = (np.load(os.path.join(w, folder, name)) for w in runs)
        if a.dtype.kind == 'f':
          np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f'{folder}/{name}')
        else:  # ids, labels, positions
          np.testing.assert_array_equal(a, b, err_msg=f'{folder}/{name}')
  (rel,) = _files(one, 'selection.npz')
  a, b = (_arrays(os.path.join(w, rel)) for w in runs)
  assert sorted(a) == sorted(b)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_train_samples_and_metrics_agree(runs, tfds_dir):
  import jax  # pylint: disable=g-import-not-at-top
  from gadc_jax import generator  # pylint: disable=g-import-not-at-top
  from gadc_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from tests.conftest import digits_config  # pylint: disable=g-import-not-at-top
  config = digits_config(tfds_dir, 'smoke=True')
  info = input_pipeline.split_info(config.data, config.train.split)
  params = [generator.restore_ema_params(config, w, info.num_classes, info.image_shape)[1]
            for w in runs]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), *params)

  (rel,) = _files(runs[0], 'samples.npz')
  a, b = (_arrays(os.path.join(w, rel)) for w in runs)
  np.testing.assert_array_equal(a['labels'], b['labels'])
  # uint8 pixels: a float difference at a rounding boundary moves a pixel by one level.
  diff = np.abs(a['images'].astype(int) - b['images'].astype(int))
  assert diff.max() <= 1 and diff.mean() < 0.01

  (rel,) = [os.path.join('eval', f) for f in os.listdir(os.path.join(runs[0], 'eval'))
            if f.endswith('.json')]
  metrics = [json.load(open(os.path.join(w, rel)))['metrics'] for w in runs]
  assert sorted(metrics[0]) == sorted(metrics[1])
  for key in metrics[0]:
    assert metrics[1][key] == pytest.approx(metrics[0][key], rel=0.02, abs=1e-3), key
