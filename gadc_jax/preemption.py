"""SIGTERM as a request to stop cleanly, agreed on by every host.

A scheduler (SLURM, a TPU pod's maintenance, Kubernetes) sends SIGTERM before it kills a job.
main.py turns SIGTERM into a flag for the whole job (`sigterm_requests_stop`); long loops ask
`stop_agreed()` at a step boundary, save what they have and raise `Preempted`. On several
hosts every host takes part in the same check at the same step, so all of them save the same
step and stop together. main.py reports a Preempted job with exit status 143 (128 + SIGTERM),
and the same command run again resumes.
"""

import contextlib
import signal
import threading
from typing import Iterator

import jax
from jax.experimental import multihost_utils
import numpy as np

EXIT_STATUS = 128 + signal.SIGTERM

_requested = threading.Event()


class Preempted(Exception):
  """A job stopped on SIGTERM after saving its work; the message says where it stopped."""


@contextlib.contextmanager
def sigterm_requests_stop() -> Iterator[None]:
  """While inside, SIGTERM sets the stop flag instead of killing the process."""
  if threading.current_thread() is not threading.main_thread():
    yield  # signal handlers can only be set from the main thread.
    return
  _requested.clear()
  previous = signal.signal(signal.SIGTERM, lambda *_: _requested.set())
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)
    _requested.clear()  # outside, SIGTERM acts as it did before.


def requested() -> bool:
  """Whether this process has received SIGTERM (no communication)."""
  return _requested.is_set()


def stop_agreed() -> bool:
  """Whether any host has received SIGTERM. Every host must call it at the same point."""
  if jax.process_count() == 1:
    return requested()
  flags = multihost_utils.process_allgather(np.asarray(requested(), np.int32))
  return bool(np.any(flags))


def preempted(where: str) -> Preempted:
  """The Preempted exception for a job that stopped `where` (e.g. 'at step 300 of ...')."""
  return Preempted(f'stopped by SIGTERM {where}; run the same command again to resume')


def raise_if_agreed(where: str) -> None:
  """Raises Preempted naming `where` once any host has received SIGTERM."""
  if stop_agreed():
    raise preempted(where)
