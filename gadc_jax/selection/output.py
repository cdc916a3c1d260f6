"""What every selection method returns for a batch of classes."""

from typing import NamedTuple

import numpy as np


class SelectionOutput(NamedTuple):
  """The subsets chosen for a batch of B classes, m images each.

  Attributes:
    indices: [B, m] int32 row indices into each class's (padded) problem; rows are real
      candidates, distinct within a class.
    objective: [B] float32 the GADC objective J of each subset where the method computes
      it, NaN where it does not (the select job scores every subset separately).
    unconverged: [B] int32 how many of the partial OT solves the method ran for each class
      stopped at the iteration cap before reaching the threshold; 0 for methods that run
      none. Nonzero means some of the method's J values (and choices) rest on unconverged
      solves.
  """
  indices: np.ndarray
  objective: np.ndarray
  unconverged: np.ndarray
