"""Orbax checkpoints every N steps and on SIGTERM (preemption), with exact resume."""

import os
import signal
import threading
from typing import Any

import jax
import orbax.checkpoint as ocp

from gadc_jax import artifacts


class Preemption:
  """Set by SIGTERM; the train loop checkpoints and stops at the next step boundary."""

  def __init__(self):
    self._event = threading.Event()
    if threading.current_thread() is threading.main_thread():
      signal.signal(signal.SIGTERM, lambda *_: self._event.set())

  @property
  def requested(self) -> bool:
    return self._event.is_set()


class Checkpointer:
  """Saves and restores a state pytree under `directory` (keeps the last `keep`)."""

  def __init__(self, directory: str, keep: int = 2):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  @property
  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any) -> None:
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def restore(self, abstract_state: Any, step: int | None = None) -> Any:
    """The state at `step` (default: the latest) with the shapes, dtypes and shardings of
    `abstract_state` (e.g. from jax.eval_shape); a UserError when the saved tree differs
    (e.g. a checkpoint of another model size)."""
    step = self.latest_step if step is None else step
    target = jax.tree.map(
        lambda x: ocp.utils.to_shape_dtype_struct(x) if hasattr(x, 'shape') else x,
        abstract_state)
    try:
      return self.manager.restore(step, args=ocp.args.StandardRestore(target))
    except Exception as e:  # orbax raises assorted types for a missing or misshaped tree.
      first = str(e).splitlines()[0] if str(e) else ''
      raise artifacts.UserError(
          f'checkpoint {self.directory}/{step} does not fit the configured model: it holds '
          f'another tree or shapes ({type(e).__name__}: {first[:200]})') from None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
