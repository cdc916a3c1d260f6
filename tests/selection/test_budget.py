"""Per-class budgets: balanced and proportional allocations, small classes, bad options."""

from fractions import Fraction

import numpy as np
import pytest

from gadc_jax import defaults
from gadc_jax.selection import budget


def _hamilton(total, sizes):
  """Largest remainders with exact fractions: floors, then +1 for the largest remainders
  (ties to the lower index)."""
  shares = [Fraction(total * n, sum(sizes)) for n in sizes]
  m = [int(s) for s in shares]
  order = sorted(range(len(sizes)), key=lambda c: (-(shares[c] - m[c]), c))
  for c in order[:total - sum(m)]:
    m[c] += 1
  return m


@pytest.mark.parametrize('sizes,budget_,expected', [
    ([10, 30, 20, 40], '10', [1, 3, 2, 4]),       # exact shares.
    ([3, 3, 4], '5', [2, 1, 2]),                  # 1.5, 1.5, 2: the tie goes to class 0.
    ([5, 7, 88], '10', [1, 1, 8]),                # 0.5 and 0.7 raised to 1, 8 for the rest.
    ([1, 2, 3, 4], '50%', [1, 1, 1, 2]),          # 0.5 -> 1; then 8/9 -> 1; then 9/7, 12/7.
])
def test_proportional_by_hand(sizes, budget_, expected):
  m = budget.per_class_budget(budget_, np.array(sizes), allocation='proportional')
  np.testing.assert_array_equal(m, expected)


def test_proportional_is_hamilton_when_every_share_reaches_one():
  rng = np.random.default_rng(0)
  for _ in range(50):
    sizes = rng.integers(20, 400, size=rng.integers(2, 12))
    # Every share total * n_c / N >= 1: the floor rule does not apply.
    total = int(rng.integers(-(-sizes.sum() // sizes.min()), sizes.sum() + 1))
    m = budget.per_class_budget(str(total), sizes, allocation='proportional')
    np.testing.assert_array_equal(m, _hamilton(total, sizes.tolist()))


def test_balanced_is_unchanged_by_class_sizes():
  sizes = np.array([5, 7, 88])
  np.testing.assert_array_equal(budget.per_class_budget('10', sizes), [3, 3, 4])


def test_small_class_is_an_error_or_taken_whole():
  sizes = np.array([10, 2, 10])
  with pytest.raises(ValueError, match=r"'5/class' asks 5 images of class 1, which has only 2"):
    budget.per_class_budget('5/class', sizes)
  np.testing.assert_array_equal(
      budget.per_class_budget('5/class', sizes, small_classes='take_all'), [5, 2, 5])
  # Balanced 15 = 5 each; class 1 gives its 2, the total falls short (12).
  np.testing.assert_array_equal(
      budget.per_class_budget('15', sizes, small_classes='take_all'), [5, 2, 5])


def test_fewer_images_than_classes():
  with pytest.raises(ValueError, match=r"'2' is 2 images for 3 classes"):
    budget.per_class_budget('2', np.array([4, 4, 4]), allocation='proportional')
  with pytest.raises(ValueError, match=r"'10%' is 1 images for 3 classes"):
    budget.per_class_budget('10%', np.array([4, 4, 4]))


def test_check_options():
  cfg = defaults.select()
  budget.check_options(cfg)
  for key, bad in (('allocation', 'even'), ('small_classes', 'skip')):
    wrong = cfg.copy_and_resolve_references()
    wrong[key] = bad
    with pytest.raises(ValueError, match=f"config.select.{key} must be one of .* got '{bad}'"):
      budget.check_options(wrong)
  cfg.allocation = 'proportional'
  cfg.budget = '10/class'
  with pytest.raises(ValueError, match=r"'10/class' gives every class the same size"):
    budget.check_options(cfg)
