"""Selection methods by name: `config.select.method` -> its batched select function.

Every method has the interface `select(problems, m, cfg, keys) -> SelectionOutput` (see
gadc_jax/selection/baselines.py); its options `cfg` are `gadc_jax.defaults.method(name)`.
"""

from typing import Callable

from gadc_jax.selection import baselines
from gadc_jax.selection import gadc

_METHODS = {
    'gadc': gadc.select,
    'random': baselines.select_random,
    'herding': baselines.select_herding,
    'kcenter': baselines.select_kcenter,
    'ccs': baselines.select_ccs,
    'dq': baselines.select_dq,
    'd2c': baselines.select_d2c,
}


def get_method(name: str) -> Callable:
  """The select function of method `name`; a ValueError naming the known ones otherwise."""
  if name not in _METHODS:
    raise ValueError(f'unknown selection method {name!r}; known: {", ".join(_METHODS)}')
  return _METHODS[name]
