"""Config values checked before any work starts: one ValueError naming the key, its value
and what it must be (main.py prints it as one line)."""

import math
from typing import Any, Iterable


def _number(value: Any) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def require(cfg, where: str, *, positive_ints: Iterable[str] = (),
            non_negative_ints: Iterable[str] = (), positive: Iterable[str] = (),
            non_negative: Iterable[str] = (), fractions: Iterable[str] = ()) -> None:
  """Checks fields of a config section `cfg` (called `where`, e.g. 'config.train').

  positive_ints: integers >= 1 (counts, sizes, steps); non_negative_ints: integers >= 0
  (0 = off); positive: finite numbers > 0 (rates, scales); non_negative: finite numbers
  >= 0 (weights); fractions: finite numbers in [0, 1] (probabilities, decays).
  """
  rules = [(positive_ints, lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
            'a positive integer'),
           (non_negative_ints,
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
            'an integer >= 0'),
           (positive, lambda v: _number(v) and math.isfinite(v) and v > 0,
            'a finite number > 0'),
           (non_negative, lambda v: _number(v) and math.isfinite(v) and v >= 0,
            'a finite number >= 0'),
           (fractions, lambda v: _number(v) and 0 <= v <= 1, 'a number in [0, 1]')]
  for names, ok, expected in rules:
    for name in names:
      value = cfg[name]
      if not ok(value):
        raise ValueError(f'{where}.{name} must be {expected}, got {value!r}')


def require_interval(value: Any, key: str, *, upper: float = math.inf,
                     may_be_off: bool = False) -> None:
  """Checks that config value `key` is (min, max), finite numbers with
  0 < min <= max <= upper, or () (off) when `may_be_off`."""
  if may_be_off and isinstance(value, (tuple, list)) and not value:
    return
  if not (isinstance(value, (tuple, list)) and len(value) == 2
          and all(_number(v) and math.isfinite(v) for v in value)
          and 0 < value[0] <= value[1] <= upper):
    bound = '' if math.isinf(upper) else f' <= {upper:g}'
    off = '() (off) or ' if may_be_off else ''
    raise ValueError(f'{key} must be {off}(min, max) with 0 < min <= max{bound}, got {value!r}')
