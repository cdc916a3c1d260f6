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
  """
  indices: np.ndarray
  objective: np.ndarray
