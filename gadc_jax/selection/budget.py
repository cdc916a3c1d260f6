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


def per_class_budget(budget, class_sizes: np.ndarray) -> np.ndarray:
  """Balanced per-class sizes m_c [C] for a budget string.

  '10/class' gives every class 10; '10%' of the split or a total like '1000' is split evenly,
  B // C each, and the remainder goes one each to the largest classes (ties to the lower
  class index).
  """
  form, amount = parse(budget)
  num_classes = len(class_sizes)
  if form == 'per_class':
    return np.full(num_classes, amount, np.int64)
  total = int(round(amount / 100 * class_sizes.sum())) if form == 'percent' else amount
  m = np.full(num_classes, total // num_classes, np.int64)
  largest = np.lexsort((np.arange(num_classes), -class_sizes))
  m[largest[:total % num_classes]] += 1
  return m
