"""Entry point: python main.py --config=configs/NAME.py --workdir=DIR [--config.KEY=VALUE ...].

Parses flags, sets up the distributed runtime and runs the job named by `config.job`. Bad
input (a config key that does not exist, a missing file, mismatched artifacts) ends with one
line that names the problem and a non-zero exit.
"""

import logging as std_logging
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TF is only our input pipeline.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from gadc_jax import artifacts
from gadc_jax import host
from gadc_jax import jobs

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file; `--config.KEY=VALUE` overrides a key.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for every artifact of the run.')
_MULTIHOST = flags.DEFINE_bool(
    'multihost', False, 'Call jax.distributed.initialize() (set by the launch/ scripts on '
    'TPU pods and SLURM, where jax finds the coordinator from the environment).')


class _QuietLibraries(std_logging.Filter):
  """Drops the INFO chatter of TFDS and orbax (lines per read and save) from our logs."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        lib in record.pathname for lib in ('tensorflow_datasets', 'orbax'))


def _fail(message: str) -> None:
  # One line: JAX appends notes to exceptions raised under tracing.
  print(f'error: {message.splitlines()[0] if message else "failed"}', file=sys.stderr)
  sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with one-line errors for bad configs and overrides."""
  try:
    jobs.check_overrides(argv)
    return flags.FLAGS(argv)
  except artifacts.UserError as e:
    _fail(str(e))
  except flags.Error as e:
    _fail(str(e).splitlines()[0])


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    _fail(f'unexpected arguments: {" ".join(argv[1:])}')
  if _WORKDIR.value is None:
    _fail('--workdir is required')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  host.configure_cpu_runtime()
  if _MULTIHOST.value:
    jax.distributed.initialize()
  logging.info('host %d of %d; %d local / %d global devices: %s', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].device_kind)
  try:
    jobs.run(_CONFIG.value, _WORKDIR.value)
  except artifacts.UserError as e:
    _fail(str(e))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
