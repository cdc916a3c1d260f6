"""Statistics of a study over seeds: intervals, paired differences, rankings (scipy).

Every interval is Student's t at `confidence` over the seeds of one group at one budget; a
single seed has none (half-width NaN), which the report says in words.
"""

import math
from typing import Mapping, NamedTuple, Sequence

import numpy as np
from scipy import stats


class Interval(NamedTuple):
  """A mean over n values with the half-width of its t interval (NaN when n < 2)."""
  mean: float
  half_width: float
  n: int

  @property
  def low(self) -> float:
    return self.mean - self.half_width

  @property
  def high(self) -> float:
    return self.mean + self.half_width

  @property
  def has_interval(self) -> bool:
    return math.isfinite(self.half_width)


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
  """The mean of `values` [n] and the half-width of its Student t interval at `confidence`.

  n = 1 gives half-width NaN (no interval from one seed); n values all equal give 0.
  """
  x = np.asarray(values, np.float64)
  if x.ndim != 1 or not x.size:
    raise ValueError(f'mean_interval needs a non-empty list of values, got shape {x.shape}')
  mean = float(np.mean(x))
  if x.size < 2:
    return Interval(mean, math.nan, 1)
  sem = float(stats.sem(x))
  if sem == 0:
    return Interval(mean, 0.0, int(x.size))
  low, high = stats.t.interval(confidence, x.size - 1, loc=mean, scale=sem)
  return Interval(mean, float(high - low) / 2, int(x.size))


class PairedDifference(NamedTuple):
  """group - baseline over the seeds both have: the interval of the mean difference and
  the two-sided p-value of the paired t test (NaN with fewer than two pairs)."""
  difference: Interval
  p_value: float
  seeds: tuple[int, ...]


def paired_difference(values: Mapping[int, float], baseline: Mapping[int, float],
                      confidence: float = 0.95) -> PairedDifference | None:
  """The difference of `values` {seed: value} minus `baseline` {seed: value}, matched by
  seed; None when no seed is in both."""
  seeds = tuple(sorted(set(values) & set(baseline)))
  if not seeds:
    return None
  a = np.asarray([values[s] for s in seeds], np.float64)
  b = np.asarray([baseline[s] for s in seeds], np.float64)
  p_value = math.nan
  if len(seeds) >= 2 and np.any(a - b != (a - b)[0]):
    p_value = float(stats.ttest_rel(a, b).pvalue)
  return PairedDifference(mean_interval(a - b, confidence), p_value, seeds)


class Rank(NamedTuple):
  """A group's place for one metric at one budget.

  rank: 1 + the number of groups whose interval lies wholly on the better side of this
    group's (so groups whose intervals overlap the best's share rank 1); without intervals
    (one seed) the means alone decide, and any two different means separate.
  overlaps: the other groups whose intervals overlap this group's, in ranking order.
  """
  group: str
  interval: Interval
  rank: int
  overlaps: tuple[str, ...]


def _bounds(interval: Interval) -> tuple[float, float]:
  if interval.has_interval:
    return interval.low, interval.high
  return interval.mean, interval.mean


def ranking(intervals: Mapping[str, Interval], lower_is_better: bool) -> list[Rank]:
  """Groups {name: Interval} ordered best first by mean (ties by name), with their ranks."""
  sign = 1.0 if lower_is_better else -1.0
  order = sorted(intervals, key=lambda g: (sign * intervals[g].mean, g))
  out = []
  for g in order:
    low, high = _bounds(intervals[g])
    better, overlaps = 0, []
    for other in order:
      if other == g:
        continue
      o_low, o_high = _bounds(intervals[other])
      if (o_high < low) if lower_is_better else (o_low > high):
        better += 1
      elif o_low <= high and low <= o_high:
        overlaps.append(other)
    out.append(Rank(g, intervals[g], 1 + better, tuple(overlaps)))
  return out
