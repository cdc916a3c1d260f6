"""Budgets: how many images each class gets."""

import numpy as np


def per_class_budget(budget: str, class_sizes: np.ndarray) -> np.ndarray:
  """Balanced per-class sizes m_c [C] for a budget string.

  '10/class' gives every class 10; '10%' of the split or a total like '1000' is split evenly,
  B // C each, and the remainder goes one each to the largest classes (ties to the lower
  class index).
  """
  budget = str(budget).strip()
  num_classes = len(class_sizes)
  try:
    if budget.endswith('/class'):
      return np.full(num_classes, int(budget[:-len('/class')]), np.int64)
    if budget.endswith('%'):
      total = int(round(float(budget[:-1]) / 100 * class_sizes.sum()))
    else:
      total = int(budget)
  except ValueError:
    raise ValueError(
        f"select.budget {budget!r} is not '10%', '1000' or '10/class'") from None
  m = np.full(num_classes, total // num_classes, np.int64)
  largest = np.lexsort((np.arange(num_classes), -class_sizes))
  m[largest[:total % num_classes]] += 1
  return m
