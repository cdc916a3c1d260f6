"""Orbax checkpoints of a train state: save every N steps, restore all of it or one field,
and tell whether a checkpoint a finished run recorded is still whole."""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from gadc_jax import artifacts


class Checkpointer:
  """Saves and restores a state pytree under `directory`: keeps the last `keep` and, with
  `keep_every` > 0, every checkpoint of a step that is a multiple of it."""

  def __init__(self, directory: str, keep: int = 2, keep_every: int = 0):
    self.directory = os.path.abspath(directory)
    policies = ocp.checkpoint_managers
    policy = policies.LatestN(keep)
    if keep_every:
      policy = policies.AnyPreservationPolicy([policy, policies.EveryNSteps(keep_every)])
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(preservation_policy=policy, create=True))

  @property
  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def _existing_dir(self, step: int) -> str:
    """The folder of checkpoint `step`; a FileNotFoundError when it is missing."""
    folder = self.step_dir(step)
    if not os.path.isdir(folder):
      raise FileNotFoundError(f'checkpoint {folder} is missing')
    return folder

  def _checked(self, step: int, abstract: Any, restore):
    """restore(), as a FileNotFoundError when checkpoint `step` is missing and a ValueError
    when what it holds is not a tree of the shapes and dtypes of `abstract`."""
    folder = self._existing_dir(step)
    try:
      restored = restore()
    except Exception as e:  # orbax raises assorted types for a missing or misshaped tree.
      first = str(e).splitlines()[0] if str(e) else ''
      mismatch = f'{type(e).__name__}: {first[:200]}'
    else:
      # orbax returns the saved shapes where they differ from the target's, without a word.
      mismatch = _first_mismatch(abstract, restored)
      if mismatch is None:
        return restored
    raise ValueError(
        f'checkpoint {folder} does not fit the configured model: it holds another tree or '
        f'shapes, or damaged files ({mismatch})')

  def describe(self, step: int) -> dict[str, dict[str, Any]]:
    """`artifacts.describe_files` of every file of checkpoint `step` (paths relative to its
    folder): what a finished run records so that a later reader finds it whole."""
    folder = self.step_dir(step)
    names = sorted(os.path.relpath(os.path.join(root, name), folder)
                   for root, _, files in os.walk(folder) for name in files)
    return artifacts.describe_files(folder, names)

  def verify(self, step: int, described: dict[str, dict[str, Any]]) -> None:
    """A FileNotFoundError when checkpoint `step` is missing, a ValueError naming a file of
    it that is missing or of another size than `described` (from `describe`).

    Sizes only: a checkpoint can be many GB, and a truncated or lost file is what a crash,
    a full disk or a cleanup leaves; readers check the content they use by its fingerprint.
    """
    folder = self._existing_dir(step)
    damaged = artifacts.damaged_files(folder, described, checksums=False)
    if damaged:
      name, problem = next(iter(damaged.items()))
      raise ValueError(f'checkpoint {folder} is damaged: {name} {problem}')

  def delete(self, step: int) -> None:
    """Removes checkpoint `step` if it is there (e.g. a damaged one, before it is redone)."""
    if step in self.manager.all_steps():
      self.manager.delete(step)

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
        step, abstract_state,
        lambda: self.manager.restore(step, args=ocp.args.StandardRestore(target)))

  def restore_field(self, field: str, abstract: Any, step: int) -> Any:
    """Field `field` of the state saved at `step` (e.g. 'ema_params'), read alone: what is
    only needed for inference is restored without building the optimizer state."""
    target = {field: abstract}
    args = ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True)
    # A manager that has saved holds a Standard handler for the item; a fresh one takes any.
    reader = ocp.CheckpointManager(self.directory)
    return self._checked(step, abstract, lambda: reader.restore(step, args=args)[field])

  def wait(self) -> None:
    self.manager.wait_until_finished()


def _first_mismatch(abstract: Any, restored: Any) -> str | None:
  """'PATH: saved (shape, dtype), configured (shape, dtype)' of the first leaf where the two
  trees differ (a leaf missing from one of them included), or None."""
  def leaves(tree):
    return {jax.tree_util.keystr(path): (tuple(leaf.shape), str(leaf.dtype))
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
  configured, saved = leaves(abstract), leaves(restored)
  for path in sorted(configured.keys() | saved.keys()):
    if configured.get(path) != saved.get(path):
      return f'{path}: saved {saved.get(path)}, configured {configured.get(path)}'
  return None
