"""Two small classifiers for the 8x8 digits, of different architecture.

One is the selection encoder and classifier, the other the evaluation feature space, so a
selection is never scored only in the space it optimised.
"""

import flax.linen as nn
import jax.numpy as jnp


class DigitsCNN(nn.Module):
  """Conv net: images [B, 8, 8, C] in [-1, 1] -> (features [B, 2*width], logits [B, K])."""
  num_classes: int
  width: int = 32

  @nn.compact
  def __call__(self, images: jnp.ndarray):
    x = nn.relu(nn.Conv(self.width, (3, 3))(images))
    x = nn.relu(nn.Conv(self.width, (3, 3))(x))
    x = nn.avg_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(nn.Conv(2 * self.width, (3, 3))(x))
    features = jnp.mean(x, axis=(1, 2))
    return features, nn.Dense(self.num_classes)(features)


class DigitsMLP(nn.Module):
  """MLP on pixels: images [B, 8, 8, C] -> (features [B, width], logits [B, K])."""
  num_classes: int
  width: int = 128

  @nn.compact
  def __call__(self, images: jnp.ndarray):
    x = images.reshape(images.shape[0], -1)
    x = nn.gelu(nn.Dense(self.width)(x))
    features = nn.gelu(nn.Dense(self.width)(x))
    return features, nn.Dense(self.num_classes)(features)
