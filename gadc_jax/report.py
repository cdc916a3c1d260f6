"""What people look at rather than read: image grids (selections, samples), as PNG files."""

from typing import Sequence

import numpy as np
from PIL import Image

from gadc_jax import artifacts


def image_grid(rows: Sequence[Sequence[np.ndarray]], min_cell: int = 32,
               pad: int = 2) -> np.ndarray:
  """Tiles rows of uint8 images [H, W, C] into one uint8 image; short rows stay blank.

  Cells smaller than `min_cell` pixels are enlarged by an integer factor (nearest), so
  8x8 digits stay readable.
  """
  h, w, c = np.asarray(rows[0][0]).shape
  scale = max(1, -(-min_cell // max(h, w)))
  ch, cw = h * scale, w * scale
  ncols = max(len(r) for r in rows)
  grid = np.full((len(rows) * (ch + pad) + pad, ncols * (cw + pad) + pad, c), 255, np.uint8)
  for i, row in enumerate(rows):
    for j, img in enumerate(row):
      cell = np.kron(np.asarray(img, np.uint8), np.ones((scale, scale, 1), np.uint8))
      y, x = pad + i * (ch + pad), pad + j * (cw + pad)
      grid[y:y + ch, x:x + cw] = cell
  return grid


def save_image_grid(rows: Sequence[Sequence[np.ndarray]], path: str) -> None:
  grid = image_grid(rows)
  with artifacts.atomic_path(path) as tmp:
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(tmp, format='PNG')
