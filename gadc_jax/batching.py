"""Calls on a fixed, device-divisible batch size: pad, place, call, unpad.

A jitted function compiles once per input shape, and a sharded batch must divide evenly over
the devices. Callers with ragged batches (the last batch of a split, a class batch of any
size) pad every batch to one size with `padded_call`, which drops the padding rows from the
outputs again.
"""

from typing import Any, Callable

import jax
from jax.experimental import multihost_utils
import numpy as np

PyTree = Any


def round_up(n: int, multiple: int) -> int:
  """The smallest multiple of `multiple` that is >= n."""
  return -(-n // multiple) * multiple


def to_host(x: jax.Array | np.ndarray) -> np.ndarray:
  """x as a numpy array on this host, gathered from every process when x spans devices of
  others (a batch sharded over a multi-host mesh); every process must call it then."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def pad_rows(tree: PyTree, size: int) -> PyTree:
  """Pads the leading axis of every array leaf to `size` by repeating its last row.

  Copies of a real row (rather than zeros) keep whatever the callee computes on the padding
  as well-behaved as on real inputs.
  """

  def pad(a):
    a = np.asarray(a)
    extra = size - a.shape[0]
    if extra < 0:
      raise ValueError(f'cannot pad {a.shape[0]} rows to {size}')
    return np.concatenate([a, np.repeat(a[-1:], extra, axis=0)]) if extra else a

  return jax.tree.map(pad, tree)


def padded_call(fn: Callable[[PyTree], PyTree], tree: PyTree, size: int,
                sharding: jax.sharding.Sharding | None = None) -> PyTree:
  """fn on `tree` padded to `size` rows (placed with `sharding` if given), unpadded.

  Args:
    fn: maps a pytree of arrays [size, ...] to a pytree of arrays [size, ...].
    tree: a pytree of arrays [b, ...], 1 <= b <= size.
    size: the rows fn always sees (e.g. a batch size rounded up to the device count).
    sharding: where to place the padded inputs, e.g. split over a mesh's data axis.
  Returns:
    fn's outputs, each cut back to its first b rows.
  """
  b = jax.tree.leaves(tree)[0].shape[0]
  padded = pad_rows(tree, size)
  if sharding is not None:
    padded = jax.device_put(padded, sharding)
  return jax.tree.map(lambda out: out[:b], fn(padded))
