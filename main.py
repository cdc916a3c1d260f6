"""Entry point: python main.py --config=configs/NAME.py --workdir=DIR [--config.KEY=VALUE ...].

Parses flags, sets up the distributed runtime and runs the job named by `config.job`. This is
the one place where errors become messages: bad input (a config key that does not exist, a
missing file, mismatched artifacts; the ValueError, TypeError or OSError a library or job
raises) ends with one `error:` line that names the problem and exit status 2; a job stopped
by SIGTERM ends with one `stopped:` line and exit status 143. --traceback shows the stack.
"""

import logging as std_logging
import os
import runpy
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TF is only our input pipeline.

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags

from gadc_jax import host
from gadc_jax import jobs
from gadc_jax import preemption

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file; `--config.KEY=VALUE` overrides a key.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for every artifact of the run.')
_MULTIHOST = flags.DEFINE_bool(
    'multihost', False, 'Call jax.distributed.initialize() (set by the launch/ scripts on '
    'TPU pods and SLURM, where jax finds the coordinator from the environment).')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'With --multihost where jax detects no cluster (several '
    'processes on one machine): host:port of process 0.')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'With --coordinator_address: how many processes take part.')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'With --coordinator_address: this process\'s index, from 0.')
_TRACEBACK = flags.DEFINE_bool(
    'traceback', False, 'Let errors raise with their stack instead of the one-line message.')

# What bad input raises anywhere below: main.py reports these as one line.
_USER_ERRORS = (ValueError, TypeError, OSError)


class _QuietLibraries(std_logging.Filter):
  """Drops the INFO chatter of TFDS and orbax (lines per read and save) from our logs."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(
        lib in record.pathname for lib in ('tensorflow_datasets', 'orbax'))


def _fail(message: str) -> None:
  # One line: JAX appends notes to exceptions raised under tracing.
  print(f'error: {message.splitlines()[0] if message else "failed"}', file=sys.stderr)
  sys.exit(2)


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """`path.py` or `path.py:arg` -> the ConfigDict its get_config(arg) returns."""
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config file {path} does not exist')
  module = runpy.run_path(path)
  if 'get_config' not in module:
    raise ValueError(f'config file {path} has no get_config()')
  return module['get_config'](arg) if arg else module['get_config']()


def check_overrides(argv: list[str]) -> None:
  """Names the first `--config.KEY=...` whose KEY the config does not have.

  config_flags would report it as a long traceback; users should see one line instead.
  """
  spec = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), None)
  if spec is None:
    raise ValueError('--config is required (e.g. --config=configs/digits.py)')
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
        raise ValueError(
            f'unknown config key {path!r}: {key!r} is not in {where} (known: {known})')
      node = node[key]
      walked.append(key)


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing with one-line errors for bad configs and overrides."""
  try:
    check_overrides(argv)
    return flags.FLAGS(argv)
  except _USER_ERRORS as e:
    if '--traceback' in argv:
      raise
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
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  logging.info('host %d of %d; %d local / %d global devices: %s', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].device_kind)
  config = _CONFIG.value
  try:
    if 'job' not in config:
      raise ValueError(f'the config has no `job`; set config.job to one of: '
                       f'{", ".join(jobs.JOBS)}')
    with preemption.sigterm_requests_stop():
      jobs.run(config.job, config, _WORKDIR.value)
  except preemption.Preempted as e:
    print(f'stopped: {e}', file=sys.stderr)
    sys.exit(preemption.EXIT_STATUS)
  except _USER_ERRORS as e:
    if _TRACEBACK.value:
      raise
    _fail(str(e))


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
