"""Shared fixtures: a digits config on a private TFDS dir, and a workdir with the
classifiers and features of the default pipeline (built once per test session)."""

import os
import runpy

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

try:
  # The PyTorch oracles first: torchvision pulls in triton, whose native libraries crash the
  # process (SIGSEGV) when they load after TensorFlow's and XLA's. Loaded first, all coexist.
  import torchvision  # pylint: disable=g-import-not-at-top,unused-import
except ImportError:  # the runtime environment has no torch; the oracle tests need it.
  pass

import pytest  # pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def killed_after(fn, calls: int):
  """fn, except that call number `calls` + 1 raises KeyboardInterrupt: a kill mid-job."""
  count = {'n': 0}

  def wrapped(*args, **kwargs):
    if count['n'] == calls:
      raise KeyboardInterrupt
    count['n'] += 1
    return fn(*args, **kwargs)

  return wrapped


def digits_config(data_dir: str, arg: str | None = None):
  """configs/digits.py's config (get_config(arg)) on a private TFDS dir."""
  config = runpy.run_path(os.path.join(REPO, 'configs', 'digits.py'))['get_config'](arg)
  config.data.data_dir = data_dir
  return config


@pytest.fixture(scope='session')
def tfds_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture(scope='session')
def digits_workdir(tmp_path_factory, tfds_dir):
  """(config, workdir) after train_classifier and features of configs/digits.py."""
  from gadc_jax.jobs import features  # pylint: disable=g-import-not-at-top
  from gadc_jax.jobs import train_classifier  # pylint: disable=g-import-not-at-top
  config = digits_config(tfds_dir)
  workdir = str(tmp_path_factory.mktemp('digits'))
  train_classifier.run(config, workdir)
  features.run(config, workdir)
  return config, workdir
