"""The diffusion training loss of a DiT (Gaussian diffusion) or SiT (transport), with REPA."""

import jax
import jax.numpy as jnp

from gadc_jax.models import dit as dit_lib
from gadc_jax.models import vae as vae_lib


def make_loss_fn(model: dit_lib.DiT, cfg, diffusion, transport, text_table=None):
  """loss_fn(params, batch, key) -> (loss, metrics) for DiT (diffusion) or SiT (transport),
  plus the weighted REPA term when the batch carries REPA targets."""

  def loss_fn(params, batch, key):
    k_latent, k_drop, k_t, k_loss = jax.random.split(key, 4)
    x = batch['x']
    if 'logvar' in batch:  # a fresh draw from the VAE posterior, as DiT trains.
      x = vae_lib.sample_latents(k_latent, x, batch['logvar']) * cfg.vae.scale
    drop = jax.random.bernoulli(k_drop, cfg.class_dropout, batch['y'].shape)
    extras = {}

    def model_fn(xt, t):
      out = model.apply(params, xt, t, batch['y'], train=True, drop_labels=drop,
                        text_table=text_table)
      if isinstance(out, tuple):  # the REPA projection rides along with the prediction.
        out, extras['repa'] = out[0], out[1]['repa']
      return out

    if transport is not None:
      terms = transport.training_losses(model_fn, x, k_loss)
      metrics = {}
    else:
      t = jax.random.randint(k_t, (x.shape[0],), 0, diffusion.num_timesteps)
      terms = diffusion.training_losses(model_fn, x, t, k_loss)
      metrics = {'mse': jnp.mean(terms['mse']), 'vb': jnp.mean(terms['vb'])}
    loss = jnp.mean(terms['loss'])
    if 'repa' in batch:
      metrics['repa'] = dit_lib.repa_loss(extras['repa'], batch['repa'])
      loss = loss + cfg.repa.weight * metrics['repa']
    return loss, metrics

  return loss_fn
