"""Classifier-free guidance as a model_fn wrapper, for DiT's eps and SiT's velocity alike.

The guided prediction is uncond + scale * (cond - uncond) (Ho & Salimans): scale 1 is the
conditional model, 0 the unconditional one. Both are evaluated in one call on the doubled
batch [cond; uncond] (the same x and t, labels then null labels), as DiT's and SiT's
`forward_with_cfg`.

Which channels are guided: the first `num_guided_channels` of the output's last axis; the
others are the conditional half's values. The default guides the whole prediction part,
the first C channels for inputs with C channels: all of eps (the variance channels of a
learned-sigma DiT pass through), or all of a velocity. DiT's and SiT's releases guide only
the first 3 channels ("for exact reproducibility"), a leftover from 3-channel pixel models
that leaves the 4th SD-VAE latent channel unguided; pass num_guided_channels=3 to
reproduce their numbers.
"""

from typing import Callable, Optional

import jax
import jax.numpy as jnp

# apply_fn(x [B, ..., C], t [B], labels [B]) -> [B, ..., C'] with C' >= C.
ApplyFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def cfg_model_fn(apply_fn: ApplyFn, scale: float, null_label: int,
                 num_guided_channels: Optional[int] = None):
  """Wraps a label-conditional model into a guided one.

  Args:
    apply_fn: the conditional model; `null_label` selects its unconditional mode (the
      label DiT's label dropout trains, num_classes).
    scale: guidance scale (DiT's and SiT's --cfg-scale).
    null_label: the label that means no class.
    num_guided_channels: guided channels at the head of the output's last axis; None for
      all C channels of the input.

  Returns:
    guided(x [B, ..., C], t [B], labels [B]) -> like apply_fn's output [B, ..., C']; close
    over the labels to get a sampler's model_fn(x, t).
  """
  def guided(x: jax.Array, t: jax.Array, labels: jax.Array) -> jax.Array:
    batch = x.shape[0]
    out = apply_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                   jnp.concatenate([labels, jnp.full_like(labels, null_label)]))
    cond, uncond = out[:batch], out[batch:]
    k = x.shape[-1] if num_guided_channels is None else num_guided_channels
    mixed = uncond[..., :k] + scale * (cond[..., :k] - uncond[..., :k])
    return jnp.concatenate([mixed, cond[..., k:]], axis=-1)

  return guided
