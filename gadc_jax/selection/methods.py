"""The registry of selection methods: a name to (select_fn, default_config_fn).

Every select_fn has the batched interface `select(problems, m, cfg, keys) ->
SelectionOutput` (see gadc_jax/selection/baselines.py).
"""

from typing import Callable

from gadc_jax.artifacts import UserError
from gadc_jax.selection import baselines

_BASELINES = {
    'random': (baselines.select_random, baselines.default_random_config),
    'herding': (baselines.select_herding, baselines.default_herding_config),
    'kcenter': (baselines.select_kcenter, baselines.default_kcenter_config),
    'ccs': (baselines.select_ccs, baselines.default_ccs_config),
    'dq': (baselines.select_dq, baselines.default_dq_config),
    'd2c': (baselines.select_d2c, baselines.default_d2c_config),
}
METHOD_NAMES = ('gadc',) + tuple(_BASELINES)


def get_method(name: str) -> tuple[Callable, Callable]:
  """Returns (select_fn, default_config_fn) of the method `name`; UserError if unknown."""
  if name == 'gadc':
    # Imported here so that the registry (and every baseline) works without the GADC
    # modules loaded, and importing it never pulls in the objective's solver stack.
    from gadc_jax.selection import gadc, objective  # pylint: disable=g-import-not-at-top
    return gadc.select, objective.default_gadc_config
  if name not in _BASELINES:
    raise UserError(f'unknown selection method {name!r}; known: {", ".join(METHOD_NAMES)}')
  return _BASELINES[name]
