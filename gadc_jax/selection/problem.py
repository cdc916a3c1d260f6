"""A class as a selection problem: padded arrays so that classes of different sizes batch."""

from typing import NamedTuple, Sequence

import numpy as np


class ClassProblem(NamedTuple):
  """One class (or, with a leading batch axis B, a batch of classes) to select from.

  Rows past a class's size are padding (`mask` False). Shapes for one class of padded
  size n, feature width D, K classes of the classifier:
    features:   [n, D] float32  encoder features.
    probs:      [n, K] float32  classifier probabilities.
    ce:         [n]    float32  -log p_i(y_i).
    entropy:    [n]    float32  entropy of p_i.
    maxprob:    [n]    float32  max_k p_i(k).
    difficulty: [n]    float32  per-image diffusion difficulty (D2C); zeros when absent.
    labels:     [n]    int32    true class y_i among the classifier's K; zeros when absent.
    mask:       [n]    bool     real image (True) or padding.
    candidate:  [n]    bool     may be selected (real and passes the confidence filter).
  """
  features: np.ndarray
  probs: np.ndarray
  ce: np.ndarray
  entropy: np.ndarray
  maxprob: np.ndarray
  difficulty: np.ndarray
  labels: np.ndarray
  mask: np.ndarray
  candidate: np.ndarray

  @property
  def size(self) -> int:
    """Number of real images (unbatched problems only)."""
    return int(np.sum(self.mask))


def make_problem(features, probs, ce, entropy, maxprob, difficulty=None,
                 tau: float = 0.0, labels=None) -> ClassProblem:
  """Builds an unpadded problem for one class; `tau` is the spec's candidate filter."""
  n = features.shape[0]
  maxprob = np.asarray(maxprob, np.float32)
  candidate = maxprob >= tau
  # Spec: if the filter leaves fewer than m candidates all are candidates; the caller who
  # knows m applies that rule through `with_min_candidates`.
  return ClassProblem(
      features=np.asarray(features, np.float32),
      probs=np.asarray(probs, np.float32),
      ce=np.asarray(ce, np.float32),
      entropy=np.asarray(entropy, np.float32),
      maxprob=maxprob,
      difficulty=(np.zeros(n, np.float32) if difficulty is None
                  else np.asarray(difficulty, np.float32)),
      labels=np.zeros(n, np.int32) if labels is None else np.asarray(labels, np.int32),
      mask=np.ones(n, bool),
      candidate=candidate)


def with_min_candidates(problem: ClassProblem, m: int) -> ClassProblem:
  """Spec's filter rule: if fewer than m candidates remain, every real image is one."""
  if int(np.sum(problem.candidate)) < m:
    return problem._replace(candidate=problem.mask.copy())
  return problem


def pad_problem(problem: ClassProblem, n: int) -> ClassProblem:
  """Pads an unbatched problem to n rows (zeros, mask and candidate False)."""
  extra = n - problem.features.shape[0]
  if extra < 0:
    raise ValueError(f'cannot pad a class of {problem.features.shape[0]} rows to {n}')
  return ClassProblem(*[np.concatenate([a, np.zeros((extra,) + a.shape[1:], a.dtype)])
                        for a in problem])


def stack_problems(problems: Sequence[ClassProblem], n: int | None = None) -> ClassProblem:
  """Pads problems to a common size (default: the largest) and stacks them on axis 0."""
  n = n or max(p.features.shape[0] for p in problems)
  padded = [pad_problem(p, n) for p in problems]
  return ClassProblem(*[np.stack(field) for field in zip(*padded)])


def unstack_problem(batch: ClassProblem, i: int) -> ClassProblem:
  """The i-th class of a batch, with its padding removed."""
  one = ClassProblem(*[np.asarray(a[i]) for a in batch])
  n = int(one.mask.sum())
  return ClassProblem(*[a[:n] for a in one])


def first_non_finite(arrays) -> tuple[str, int] | None:
  """(array name, row) of the first NaN or Inf among named float arrays [n, ...], rows in
  order within each array; None when all are finite.

  `arrays` is a mapping name -> array, or a ClassProblem: then its inputs features, probs,
  ce, entropy, maxprob, difficulty (labels are integers, mask and candidate booleans: they
  cannot be non-finite).
  """
  if isinstance(arrays, ClassProblem):
    arrays = {name: getattr(arrays, name)
              for name in ('features', 'probs', 'ce', 'entropy', 'maxprob', 'difficulty')}
  for name, values in arrays.items():
    values = np.asarray(values)
    bad = np.flatnonzero(~np.isfinite(values.reshape(len(values), -1)).all(axis=1))
    if bad.size:
      return name, int(bad[0])
  return None
