"""The OT-guided sampler (OTG): DDPM / DDIM with classifier-free guidance, where inside a
window [start, end) of the sampler's steps

    z_{t-1} = s(z_t) - rho grad G_I - gamma grad G_D - beta grad G_W

(s: the plain step of gadc_jax.diffusion.gaussian; G_I, G_D: IGD's influence and deviation,
gadc_jax.distill.igd; G_W: the OT cost, gadc_jax.distill.ot_guidance).

One call makes the n-th sample of every class at once (a batch [C], one row per class); the
caller loops over n and hands each call the samples made so far (`GuidanceContext.earlier`),
so that sample n sees samples 1..n-1 of its class. The earlier samples sit in a buffer of
fixed size (the IPC) with a count, so one compilation serves every n.

Each term is a function of the x0 prediction x0_hat(z_t) = (z_t - sqrt(1 - abar) eps) /
sqrt(abar) with the model's eps held fixed (a stop-gradient: the spec's cheap form), so its
gradient with respect to z_t is sqrt(1 / abar) times its gradient with respect to x0_hat,
zero where the pixel-space prediction was clipped. With `normalize`, each term's gradient is
scaled to unit l2 norm per sample before its scale multiplies it, so that scales are step
lengths in model space whatever the terms' magnitudes. With every scale 0 the sampler draws
the same samples as `gadc_jax.generator`'s plain one, bit for bit.
"""

import dataclasses
import functools
from typing import Any, Optional

import flax.struct
import jax
import jax.numpy as jnp

from gadc_jax import generator
from gadc_jax import networks
from gadc_jax.diffusion import gaussian
from gadc_jax.distill import igd
from gadc_jax.distill import ot_guidance

TERMS = ('influence', 'deviation', 'ot')


@dataclasses.dataclass(frozen=True)
class GuidanceSpec:
  """What the guided sampler compiles for (static, hashable).

  terms: the active terms, a subset of TERMS in that order (a term outside it costs nothing;
    one inside it with scale 0 is computed and multiplied by 0).
  window: (start, end) sampler steps, counted from the first (noisiest) one, guided.
  normalize: scale each term's gradient to unit l2 norm per sample before its scale.
  epsilon_rel: the OT term's epsilon relative to the mean l1 cost.
  sinkhorn_iterations, sinkhorn_threshold: the OT term's Sinkhorn stopping rule per guided
    step (warm-started from the previous step's potentials).
  memory: the deviation term compares with at most this many latest earlier samples.
  surrogates: ((flax module, networks.input_spec), ...) of the influence term.
  latent_scale: 0 in pixel space; else the SD-VAE latent scale (the influence term decodes).
  vae: the SD-VAE module (latent space only).
  """
  terms: tuple[str, ...] = ()
  window: tuple[int, int] = (0, 0)
  normalize: bool = True
  epsilon_rel: float = 0.05
  sinkhorn_iterations: int = 20
  sinkhorn_threshold: float = 1e-3
  memory: int = 64
  surrogates: tuple[tuple[Any, tuple[int, bool]], ...] = ()
  latent_scale: float = 0.0
  vae: Any = None


@flax.struct.dataclass
class GuidanceContext:
  """The arrays the guidance reads (one row per class of the batch).

  scales: {term: [] float} rho, gamma, beta by TERMS name.
  earlier: [C, K, h, w, c] the class's samples made so far (model space), K >= 1 slots.
  count: [] int32 how many of the K slots are filled (the index n of the sample made now).
  real: [C, R, d] real samples of each class in model space, flattened (OT term).
  surrogate_params: per surrogate, its variables.
  real_gradients: per surrogate, [C, P] the mean real loss gradient of each class.
  vae_params: the SD-VAE's variables (latent space) or None.
  """
  scales: dict
  earlier: jax.Array
  count: jax.Array
  real: jax.Array
  surrogate_params: tuple = ()
  real_gradients: tuple = ()
  vae_params: Optional[Any] = None


def surrogate_logits_fn(module, spec: tuple[int, bool]):
  """logits(params, images [B, H, W, C] in [-1, 1]) of a network of gadc_jax.networks,
  differentiable in the images (the network's own preprocessing, on floats)."""
  def logits(params, images):
    return module.apply(params, networks.preprocess((images + 1.0) * 127.5, spec))[1]
  return logits


def _to_pixels(spec: GuidanceSpec, vae_params, x0: jax.Array) -> jax.Array:
  """Model-space [h, w, c] -> image [H, W, C] in [-1, 1] (the SD-VAE decodes latents)."""
  if not spec.latent_scale:
    return x0
  return spec.vae.apply(vae_params, x0[None] / spec.latent_scale, method='decode')[0]


def initial_potentials(spec: GuidanceSpec, context: GuidanceContext):
  """The OT term's Sinkhorn potentials before the first guided step: (f [C, K + 1],
  g [C, R]) zeros, or () without the OT term."""
  if 'ot' not in spec.terms:
    return ()
  batch, slots = context.earlier.shape[:2]
  return (jnp.zeros((batch, slots + 1)), jnp.zeros(context.real.shape[:2]))


def term_gradients(spec: GuidanceSpec, context: GuidanceContext, x0: jax.Array,
                   labels: jax.Array, potentials=()):
  """({term: [C, d]} the gradient of each active term with respect to x0_hat [C, h, w, c],
  the OT term's potentials): the OT solve starts from `potentials` (the previous guided
  step's, see `initial_potentials`), so that few Sinkhorn iterations a step suffice."""
  batch = x0.shape[0]
  flat = x0.reshape(batch, -1)
  earlier = context.earlier.reshape(batch, context.earlier.shape[1], -1)
  slots = jnp.arange(earlier.shape[1])
  made = slots < context.count
  grads = {}
  if 'influence' in spec.terms:
    fns = tuple(surrogate_logits_fn(m, s) for m, s in spec.surrogates)

    def influence_of(row, label, real_grads):
      image = _to_pixels(spec, context.vae_params, row.reshape(x0.shape[1:]))
      return igd.influence(fns, context.surrogate_params, image, label, real_grads)

    grads['influence'] = jax.vmap(jax.grad(influence_of))(flat, labels,
                                                          context.real_gradients)
  if 'deviation' in spec.terms:
    recent = made & (slots >= context.count - spec.memory)
    grads['deviation'] = jax.vmap(jax.grad(igd.deviation), (0, 0, None))(flat, earlier,
                                                                          recent)
  if 'ot' in spec.terms:
    def ot_of(rows, current, real, f, g):
      # Massless rows come back with f = -inf; their potential is recomputed regardless.
      init = (jnp.where(jnp.isfinite(f), f, 0.0), g)
      _, grad, (f, g) = ot_guidance.current_row_gradient(
          rows, made, current, real, spec.epsilon_rel, threshold=spec.sinkhorn_threshold,
          max_iterations=spec.sinkhorn_iterations, init=init)
      return grad, f, g
    grads['ot'], *potentials = jax.vmap(ot_of)(earlier, flat, context.real, *potentials)
  return grads, tuple(potentials)


def guidance_update(spec: GuidanceSpec, context: GuidanceContext,
                    diffusion: gaussian.GaussianDiffusion, x0: jax.Array, t: jax.Array,
                    labels: jax.Array, clipped: bool, potentials=()):
  """(sum_term scale * grad_{z_t} G_term like x0 [C, h, w, c] (what a step subtracts), the
  OT term's potentials after this step)."""
  abar = diffusion.alphas_cumprod[t[0]]
  # dx0_hat / dz_t with eps fixed: 1 / sqrt(abar), 0 where the prediction was clipped.
  chain = jnp.sqrt(1.0 / abar) * (jnp.abs(x0) < 1.0 if clipped else 1.0)
  chain = jnp.broadcast_to(chain, x0.shape).reshape(x0.shape[0], -1)
  total = jnp.zeros_like(chain)
  grads, potentials = term_gradients(spec, context, x0, labels, potentials)
  for term, grad in grads.items():
    grad = grad * chain
    if spec.normalize:
      grad = grad / jnp.maximum(jnp.linalg.norm(grad, axis=-1, keepdims=True), 1e-12)
    total = total + context.scales[term] * grad
  return total.reshape(x0.shape), potentials


@functools.partial(jax.jit, static_argnames=('model', 'method', 'steps', 'cfg_scale',
                                              'num_guided_channels', 'num_classes', 'pixel',
                                              'spec'))
def sample_next(params, labels: jax.Array, key: jax.Array, context: GuidanceContext,
                text_table=None, *, model, method: str, steps: int, cfg_scale: float,
                num_guided_channels: int, num_classes: int, pixel: bool,
                spec: GuidanceSpec) -> jax.Array:
  """The next sample of each class: model space [C, h, w, c] for labels [C].

  Noise as the plain sampler's for the same key: x_T from the first half of
  jax.random.split(key), the steps' noise from the second.
  """
  model_fn = generator.conditional_model_fn(model, params, labels, text_table, cfg_scale,
                                            num_classes, num_guided_channels)
  diffusion = gaussian.create_diffusion(str(steps), generator.DIFFUSION_STEPS)
  k_init, k_loop = jax.random.split(key)
  x_init = jax.random.normal(k_init, labels.shape + context.earlier.shape[2:])
  start, end = spec.window

  def step(carry, t, noise):
    x, potentials = carry
    out = diffusion.p_mean_variance(model_fn, x, t, pixel)
    if method == 'ddpm':
      x_next = diffusion.p_sample_step(out, t, noise)
    else:
      x_next = diffusion.ddim_step(out, x, t, noise)
    if not spec.terms:
      return x_next, potentials
    index = diffusion.num_timesteps - 1 - t[0]  # sampler step, 0 the noisiest.
    update, potentials = jax.lax.cond(
        (index >= start) & (index < end),
        lambda: guidance_update(spec, context, diffusion, out['pred_xstart'], t, labels,
                                pixel, potentials),
        lambda: (jnp.zeros_like(x), potentials))
    return x_next - update, potentials

  x, _ = diffusion.reverse_scan(step, (x_init, initial_potentials(spec, context)), k_loop,
                                x_init.shape, x_init.dtype)
  return x
