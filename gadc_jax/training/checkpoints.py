"""Orbax checkpoints of a train state: save every N steps, restore all of it or one field."""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


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

  def _checked(self, step: int, restore):
    try:
      return restore()
    except Exception as e:  # orbax raises assorted types for a missing or misshaped tree.
      first = str(e).splitlines()[0] if str(e) else ''
      raise ValueError(
          f'checkpoint {self.directory}/{step} does not fit the configured model: it holds '
          f'another tree or shapes ({type(e).__name__}: {first[:200]})') from None

  def save(self, step: int, state: Any) -> None:
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def restore(self, abstract_state: Any, step: int | None = None) -> Any:
    """The state at `step` (default: the latest) with the shapes, dtypes and shardings of
    `abstract_state` (e.g. from jax.eval_shape); a ValueError when the saved tree differs
    (e.g. a checkpoint of another model size)."""
    step = self.latest_step if step is None else step
    target = jax.tree.map(
        lambda x: ocp.utils.to_shape_dtype_struct(x) if hasattr(x, 'shape') else x,
        abstract_state)
    return self._checked(
        step, lambda: self.manager.restore(step, args=ocp.args.StandardRestore(target)))

  def restore_field(self, field: str, abstract: Any, step: int) -> Any:
    """Field `field` of the state saved at `step` (e.g. 'ema_params'), read alone: what is
    only needed for inference is restored without building the optimizer state."""
    target = {field: abstract}
    args = ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True)
    # A manager that has saved holds a Standard handler for the item; a fresh one takes any.
    reader = ocp.CheckpointManager(self.directory)
    restored = self._checked(step, lambda: reader.restore(step, args=args)[field])
    # A partial restore takes the saved shapes as they are: compare them with the model's.
    want = jax.tree.map(lambda a: tuple(a.shape), abstract)
    found = jax.tree.map(lambda a: tuple(a.shape), restored)
    if want != found:
      raise ValueError(f'checkpoint {self.directory}/{step} does not fit the configured model: '
                       f'its {field} have other shapes or another tree')
    return restored

  def wait(self) -> None:
    self.manager.wait_until_finished()
