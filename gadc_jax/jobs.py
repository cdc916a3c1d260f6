"""Jobs found by name: `config.job` names a module whose `run(config, workdir)` does the work."""

import importlib
import os
import runpy

from absl import logging
import ml_collections

from gadc_jax import artifacts

JOBS = {
    'train_classifier': 'gadc_jax.train_classifier',
    'features': 'gadc_jax.features',
    'select': 'gadc_jax.selection.select_job',
    'train': 'gadc_jax.training.train',
    'sample': 'gadc_jax.evaluation.sample',
    'evaluate': 'gadc_jax.evaluation.evaluate',
    'pipeline': 'gadc_jax.pipeline',
}


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  if 'job' not in config:
    raise artifacts.UserError('the config has no `job`; set config.job to one of: '
                              + ', '.join(JOBS))
  if config.job not in JOBS:
    raise artifacts.UserError(f'unknown job {config.job!r}; known jobs: {", ".join(JOBS)}')
  artifacts.ensure_writable_dir(workdir)
  logging.info('job %s in %s', config.job, workdir)
  importlib.import_module(JOBS[config.job]).run(config, workdir)


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """`path.py` or `path.py:arg` -> the ConfigDict its get_config(arg) returns."""
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise artifacts.UserError(f'config file {path} does not exist')
  module = runpy.run_path(path)
  if 'get_config' not in module:
    raise artifacts.UserError(f'config file {path} has no get_config()')
  return module['get_config'](arg) if arg else module['get_config']()


def check_overrides(argv: list[str]) -> None:
  """Names the first `--config.KEY=...` whose KEY the config does not have.

  config_flags would report it as a long traceback; users should see one line instead.
  """
  spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  if spec is None:
    raise artifacts.UserError('--config is required (e.g. --config=configs/digits.py)')
  config = load_config_file(spec)
  for arg in argv:
    if not arg.startswith('--config.'):
      continue
    path = arg[len('--config.'):].split('=', 1)[0]
    node, walked = config, []
    for key in path.split('.'):
      if not isinstance(node, (ml_collections.ConfigDict, dict)) or key not in node:
        where = '.'.join(walked) or 'the top level'
        known = ', '.join(sorted(node.keys())) if hasattr(node, 'keys') else '(not a section)'
        raise artifacts.UserError(
            f'unknown config key {path!r}: {key!r} is not in {where} (known: {known})')
      node = node[key]
      walked.append(key)
