"""Budgets: how many images each class gets."""

import math
from typing import NamedTuple

import numpy as np

_FORMS = "'10%' of the split, '1000' images or '10/class'"


class Budget(NamedTuple):
  """A parsed `select.budget`: `amount` (> 0, finite) per class, in percent, or in all."""
  form: str  # 'per_class' | 'percent' | 'total'
  amount: float


def parse(budget) -> Budget:
  """`select.budget` as a Budget, or a ValueError naming select.budget and its forms.

  Checked before any work: 'inf%', 'nan', '-5' or '0/class' could only end in a traceback
  or an empty selection later.
  """
  text = str(budget).strip()
  if text.endswith('/class'):
    form, number, parse_number = 'per_class', text[:-len('/class')], int
  elif text.endswith('%'):
    form, number, parse_number = 'percent', text[:-1], float
  else:
    form, number, parse_number = 'total', text, int
  try:
    amount = parse_number(number)
  except ValueError:
    amount = None
  if amount is None or not math.isfinite(amount) or amount <= 0:
    raise ValueError(f'select.budget {text!r} is not a positive finite budget: use {_FORMS}')
  return Budget(form, amount)


ALLOCATIONS = ('balanced', 'proportional')
SMALL_CLASSES = ('error', 'take_all')


def check_options(cfg, where: str = 'config.select') -> None:
  """`budget`, `allocation` and `small_classes` of the select config, checked before any
  work: one ValueError naming the key."""
  form, _ = parse(cfg.budget)
  for key, known in (('allocation', ALLOCATIONS), ('small_classes', SMALL_CLASSES)):
    if cfg[key] not in known:
      raise ValueError(f'{where}.{key} must be one of {", ".join(known)}, got {cfg[key]!r}')
  if form == 'per_class' and cfg.allocation == 'proportional':
    raise ValueError(f'{where}.budget {cfg.budget!r} gives every class the same size, which '
                     f"{where}.allocation 'proportional' contradicts: give a total ('1000') or "
                     "a share ('10%')")


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
  """Integers [C] summing to total, in proportion to the int weights [C] (Hamilton's method).

  Each gets the floor of its exact share total * w / sum(w); the leftover units go one each
  to the largest fractional parts (ties to the lower index). Integer arithmetic, so shares
  are compared exactly.
  """
  whole, fraction = np.divmod(total * weights.astype(np.int64), weights.sum())
  whole[np.argsort(-fraction, kind='stable')[:total - whole.sum()]] += 1
  return whole


def _proportional(total: int, class_sizes: np.ndarray) -> np.ndarray:
  """`total` split in proportion to class sizes, each class >= 1 (needs total >= C).

  A class whose exact share is below 1 gets 1, and the rest of the budget is split over the
  other classes in proportion to their sizes; repeated until every remaining share is >= 1
  (each step only lowers the others' shares), then `_largest_remainder`.
  """
  floored = np.zeros(len(class_sizes), bool)
  while True:
    rest = total - floored.sum()
    low = ~floored & (rest * class_sizes < class_sizes[~floored].sum())
    if not low.any():
      break
    floored |= low
  m = np.ones(len(class_sizes), np.int64)
  m[~floored] = _largest_remainder(total - floored.sum(), class_sizes[~floored])
  return m


def per_class_budget(budget, class_sizes: np.ndarray, allocation: str = 'balanced',
                     small_classes: str = 'error') -> np.ndarray:
  """Per-class sizes m_c [C] of a budget string (options: see `check_options`).

  '10/class' gives every class 10. '10%' of the split or a total like '1000' is split
  - 'balanced': evenly, B // C each, the remainder one each to the largest classes (ties to
    the lower class index);
  - 'proportional': in proportion to the class sizes, by largest remainders, each class at
    least 1 (`_proportional`).
  A class with fewer images than its quota is a ValueError naming it (small_classes
  'error'), or gives all its images (small_classes 'take_all'; the total then falls short:
  the missing images are not moved to other classes). A total below the number of classes
  is a ValueError.

  Args:
    budget: `select.budget`.
    class_sizes: [C] int images per class, each >= 1.
    allocation: 'balanced' or 'proportional'.
    small_classes: 'error' or 'take_all'.

  Returns:
    [C] int64 images to select per class, each in 1..class size.
  """
  form, amount = parse(budget)
  class_sizes = np.asarray(class_sizes, np.int64)
  num_classes = len(class_sizes)
  if form == 'per_class':
    m = np.full(num_classes, amount, np.int64)
  else:
    total = int(round(amount / 100 * class_sizes.sum())) if form == 'percent' else amount
    if total < num_classes:
      raise ValueError(f'select.budget {budget!r} is {total} images for {num_classes} '
                       'classes: fewer than one per class; raise the budget')
    if allocation == 'proportional':
      m = _proportional(total, class_sizes)
    else:
      m = np.full(num_classes, total // num_classes, np.int64)
      largest = np.lexsort((np.arange(num_classes), -class_sizes))
      m[largest[:total % num_classes]] += 1
  short = np.flatnonzero(m > class_sizes)
  if short.size and small_classes == 'error':
    c = short[0]
    raise ValueError(f'select.budget {budget!r} asks {m[c]} images of class {c}, which has '
                     f'only {class_sizes[c]}; set select.small_classes=take_all to take all '
                     'of such a class')
  return np.minimum(m, class_sizes)
