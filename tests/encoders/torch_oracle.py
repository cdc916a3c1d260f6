"""Helpers shared by the encoder tests: random PyTorch reference networks and comparisons."""

import numpy as np
import torch


def calibrate_batchnorm(model: torch.nn.Module, images: torch.Tensor, seed: int = 0) -> None:
  """Gives every BatchNorm running stats and affine params that matter, keeping activations
  O(1): the stats of a forward pass on `images`, then randomly perturbed."""
  bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  for bn in bns:
    bn.reset_running_stats()
    bn.momentum = None  # cumulative average: after one batch, exactly its stats
  model.train()
  with torch.no_grad():
    model(images)
  model.eval()
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for bn in bns:
      n = bn.num_features
      std = bn.running_var.sqrt()
      bn.running_mean += 0.2 * std * torch.randn(n, generator=gen)
      bn.running_var *= 0.5 + 1.5 * torch.rand(n, generator=gen)
      bn.weight.copy_(0.5 + torch.rand(n, generator=gen))
      bn.bias.copy_(0.2 * torch.randn(n, generator=gen))


def state_dict_numpy(model: torch.nn.Module) -> dict[str, np.ndarray]:
  return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def nchw(images: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def random_images(shape, seed: int = 0) -> np.ndarray:
  """NHWC float32 images in [-1, 1]."""
  return np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)


def assert_close(actual, expected, tol: float = 1e-4) -> None:
  """Equal up to `tol` times the scale of `expected` (its largest magnitude)."""
  expected = np.asarray(expected)
  actual = np.asarray(actual)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  scale = float(np.abs(expected).max())
  np.testing.assert_allclose(actual, expected, rtol=0, atol=tol * max(scale, 1e-6))
