"""LIA: label-image-aligned soft labels from a pool of teachers whose size follows IPC.

The teachers are networks of config.networks trained on the full real train split (the
train_classifier job) or converted from published weights. IPC picks how many: config
lia.teachers_per_ipc maps an IPC (as a string key) to a count k, and the first k of the pool's
order label the images: few images get the simpler labels of one network, many images the
finer labels of an ensemble. An IPC between keys takes the entry of the largest key below it.
"""

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections

from gadc_jax import networks


def num_teachers(teachers_per_ipc: ml_collections.ConfigDict | dict, ipc: int,
                 where: str = 'config.lia.teachers_per_ipc') -> int:
  """The teacher count for `ipc`: the entry of the largest IPC key <= ipc."""
  keys = sorted(int(k) for k in teachers_per_ipc)
  below = [k for k in keys if k <= ipc]
  if not below:
    raise ValueError(f'{where} has no entry for IPC {ipc} or below (its IPCs: '
                     f'{", ".join(map(str, keys))})')
  return int(teachers_per_ipc[str(below[-1])])


def choose_teachers(pool: Sequence[str], teachers_per_ipc, ipc: int, fixed: int = 0,
                    where: str = 'config.lia') -> tuple[str, ...]:
  """The first k networks of `pool` for `ipc` (k = `fixed` if > 0, else from the map); a
  one-line ValueError when the pool is smaller than k."""
  k = fixed or num_teachers(teachers_per_ipc, ipc, f'{where}.teachers_per_ipc')
  if k > len(pool):
    raise ValueError(f'{where}: IPC {ipc} asks for {k} teachers but {where}.pool has only '
                     f'{len(pool)} ({", ".join(pool) or "none"}); add trained networks to it')
  return tuple(pool[:k])


def mean_softmax(logits: jnp.ndarray, temperature: float) -> jnp.ndarray:
  """logits [T, B, K] of T teachers -> soft labels [B, K] = mean_t softmax(logits_t / temp)."""
  return jnp.mean(jax.nn.softmax(logits / temperature, axis=-1), axis=0)


@dataclasses.dataclass(frozen=True)
class Labeler:
  """label(variables, images uint8 [B, H, W, C]) -> soft labels [B, K] of the teachers
  `modules` (one input spec each): pure and traceable, so the students' train step calls it
  on augmented views; hashable by value, so a jitted step compiles once per set of teachers."""
  modules: tuple
  specs: tuple
  temperature: float

  def __call__(self, variables, images: jnp.ndarray) -> jnp.ndarray:
    logits = jnp.stack([module.apply(v, networks.preprocess(images, spec))[1]
                        for module, v, spec in zip(self.modules, variables, self.specs)])
    return mean_softmax(logits.astype(jnp.float32), self.temperature)


def make_labeler(config, workdir: str, names: Sequence[str], temperature: float
                 ) -> tuple[Labeler, tuple]:
  """(Labeler of teachers `names` of config.networks, their variables: one per teacher)."""
  loaded = [networks.load_network(config, workdir, name) for name in names]
  labeler = Labeler(tuple(m for m, _, _ in loaded),
                    tuple(networks.input_spec(config.networks[name]) for name in names),
                    float(temperature))
  return labeler, tuple(v for _, v, _ in loaded)
