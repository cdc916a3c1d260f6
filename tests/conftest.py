"""Shared fixtures: a digits config on a private TFDS dir, and a workdir with the
classifiers and features of the default pipeline (built once per test session)."""

import gc
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


def _count_lines(path: str) -> int | None:
  try:
    with open(path, 'rb') as f:
      return sum(1 for _ in f)
  except OSError:  # not Linux
    return None


def _max_map_count() -> int:
  try:
    with open('/proc/sys/vm/max_map_count') as f:
      return int(f.read())
  except (OSError, ValueError):
    return 65530


@pytest.fixture(autouse=True)
def _release_compiled_programs():
  """Drops jax's compiled programs once the process holds half of Linux's memory-map limit.

  Every executable XLA:CPU compiles keeps memory mappings while jax caches it. One process
  running the whole suite compiles thousands of programs and passed vm.max_map_count (65,530
  here): the next compile's mmap then failed inside LLVM and killed pytest with SIGSEGV.
  Clearing the caches unmaps them; later tests recompile what they need.
  """
  yield
  count = _count_lines('/proc/self/maps')
  if count is not None and count > _max_map_count() // 2:
    import jax  # pylint: disable=g-import-not-at-top
    jax.clear_caches()
    gc.collect()


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
