"""Selection methods by name: `config.select.method` -> its batched select function.

Every method has the interface `select(problems, m, cfg, keys) -> SelectionOutput` (see
gadc_jax/selection/baselines.py); its options `cfg` are `gadc_jax.defaults.method(name)`.
`select` runs one by name; GADC also splits the batch of classes over a device mesh.
"""

from typing import Callable, Optional

from jax.sharding import Mesh

from gadc_jax import validation
from gadc_jax.selection import baselines
from gadc_jax.selection import gadc
from gadc_jax.selection import objective

_METHODS = {
    'gadc': gadc.select,
    'random': baselines.select_random,
    'herding': baselines.select_herding,
    'kcenter': baselines.select_kcenter,
    'ccs': baselines.select_ccs,
    'dq': baselines.select_dq,
    'd2c': baselines.select_d2c,
}

# The methods whose subset depends on their PRNG keys; the others ignore them and make the
# same subset whatever the seed (a study makes such a selection once for all its seeds).
_SEEDED = frozenset({'random', 'ccs', 'dq'})

# `validation.require` rules of each baseline's options (GADC's: `objective.check_config`).
_OPTION_RULES = {
    'ccs': {'fractions': ('beta',), 'positive_ints': ('num_strata',)},
    'dq': {'positive_ints': ('num_bins',)},
    'd2c': {'positive_ints': ('interval',), 'non_negative': ('target',)},
}


def get_method(name: str) -> Callable:
  """The select function of method `name`; a ValueError naming the known ones otherwise."""
  if name not in _METHODS:
    raise ValueError(f'unknown selection method {name!r}; known: {", ".join(_METHODS)}')
  return _METHODS[name]


def reads_seed(name: str) -> bool:
  """Whether method `name`'s subset depends on config.select.seed."""
  get_method(name)
  return name in _SEEDED


def select(name: str, problems, m: int, cfg, keys, mesh: Optional[Mesh] = None):
  """Method `name` on a padded batch of classes. GADC splits the batch over `mesh` (a
  "classes" axis); the baselines, cheap beside it, run where jit puts them."""
  select_fn = get_method(name)
  if name == 'gadc':
    return select_fn(problems, m, cfg, keys, mesh=mesh)
  return select_fn(problems, m, cfg, keys)


def check_options(name: str, cfg, where: str) -> None:
  """One ValueError naming the first option of method `name` (its ConfigDict `cfg`, called
  `where`) out of range; cheap, so that the select job checks before any work."""
  get_method(name)
  if name == 'gadc':
    objective.check_config(cfg, where)
    return
  validation.require(cfg, where, **_OPTION_RULES.get(name, {}))
  if name == 'dq' and cfg.similarity not in baselines.DQ_SIMILARITIES:
    raise ValueError(f'{where}.similarity must be one of {", ".join(baselines.DQ_SIMILARITIES)}, '
                     f'got {cfg.similarity!r}')
  if name == 'd2c' and cfg.mode not in baselines.D2C_MODES:
    raise ValueError(f'{where}.mode must be one of {", ".join(baselines.D2C_MODES)}, got '
                     f'{cfg.mode!r}')
