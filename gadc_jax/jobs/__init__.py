"""Jobs found by name: `config.job` names a module of this package with `run(config, workdir)`.

Each job reads the artifacts of the jobs before it through `gadc_jax.layout` and the
libraries, never by importing another job; the pipeline job runs others through `run`.
"""

import importlib

from absl import logging
import ml_collections

from gadc_jax import artifacts

JOBS = ('train_classifier', 'features', 'difficulty', 'select', 'text_embeddings', 'repa_targets',
        'train', 'sample', 'evaluate', 'report', 'export', 'distill_sample', 'train_students',
        'distill', 'pipeline', 'study')


def check_name(name: str) -> None:
  if name not in JOBS:
    raise ValueError(f'unknown job {name!r}; known jobs: {", ".join(JOBS)}')


def run(name: str, config: ml_collections.ConfigDict, workdir: str):
  """Runs job `name` on `config` in `workdir` and returns what its run returns."""
  check_name(name)
  artifacts.ensure_writable_dir(workdir)
  logging.info('job %s in %s', name, workdir)
  return importlib.import_module(f'{__name__}.{name}').run(config, workdir)
