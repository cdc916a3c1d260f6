"""DiT's Gaussian diffusion: learned-range variance, epsilon prediction, L_simple + vb.

Follows ADM / IDDPM (guided-diffusion `gaussian_diffusion.py`, `respace.py`) as released with
DiT: a 1000-step linear beta schedule, the model predicting eps and a variance interpolation
value v in [-1, 1], training with MSE(eps) + the variational bound in bits per dim (the vb
term through a stop-gradient on the mean), and sampling by DDPM ancestral steps or DDIM over
a respaced subset of the timesteps.

Conventions: arrays are channels-last (NHWC or any [B, ..., C]); `t` is an int32 [B] index
into this process's timesteps, 0 the first diffusion step. The model is a pure
`model_fn(x [B, ..., C], t [B] int32) -> [B, ..., 2C]` whose t is always an index of the
ORIGINAL (un-respaced) process: `timestep_map` translates. Output channels [:C] are eps,
[C:] the variance value v.

Schedules are computed in float64 numpy (as ADM does) and stored as float32 arrays.
"""

import math
from typing import Callable, Dict, Sequence, Union

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]
SectionCounts = Union[str, Sequence[int]]


def linear_betas(num_timesteps: int = 1000) -> np.ndarray:
  """Ho et al.'s linear schedule, 1e-4 to 0.02 at 1000 steps, scaled as ADM for others.

  Returns:
    [num_timesteps] float64 betas.
  """
  scale = 1000 / num_timesteps
  return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)


def space_timesteps(num_timesteps: int, section_counts: SectionCounts) -> list[int]:
  """ADM's choice of timesteps to keep, sorted.

  Args:
    num_timesteps: steps of the process to respace.
    section_counts: 'ddimN' (DDIM's fixed integer stride giving exactly N steps), or
      counts per equal section of the process as a comma-separated string ('250',
      '10,15,20') or a sequence of ints; each section is strided evenly, first and last
      step of the section included.

  Returns:
    The kept timestep indices in increasing order.
  """
  if isinstance(section_counts, str):
    if section_counts.startswith('ddim'):
      desired = int(section_counts[len('ddim'):])
      for stride in range(1, num_timesteps):
        if len(range(0, num_timesteps, stride)) == desired:
          return list(range(0, num_timesteps, stride))
      raise ValueError(f'cannot take exactly {desired} of {num_timesteps} steps with an '
                       'integer stride')
    section_counts = [int(c) for c in section_counts.split(',')]
  size_per, extra = divmod(num_timesteps, len(section_counts))
  start, kept = 0, []
  for i, count in enumerate(section_counts):
    size = size_per + (1 if i < extra else 0)
    if size < count:
      raise ValueError(f'cannot divide a section of {size} steps into {count}')
    stride = 1 if count <= 1 else (size - 1) / (count - 1)
    # As ADM: the float stride is summed step by step and each partial sum rounded (Python's
    # banker's rounding). j * stride rounds differently for 278 of the counts 1..999 of a
    # 1000-step process, so it would keep other steps than DiT's sampler.
    position = 0.0
    for _ in range(count):
      kept.append(start + round(position))
      position += stride
    start += size
  return sorted(set(kept))


def mean_flat(x: jax.Array) -> jax.Array:
  """Mean over all but the leading (batch) axis: [B, ...] -> [B]."""
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def normal_kl(mean1, logvar1, mean2, logvar2) -> jax.Array:
  """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) elementwise, in nats."""
  return 0.5 * (-1.0 + logvar2 - logvar1 + jnp.exp(logvar1 - logvar2)
                + (mean1 - mean2) ** 2 * jnp.exp(-logvar2))


def _approx_standard_normal_cdf(x: jax.Array) -> jax.Array:
  # ADM's tanh approximation, kept so that bits per dim compare with published numbers.
  return 0.5 * (1.0 + jnp.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x: jax.Array, means: jax.Array,
                                        log_scales: jax.Array) -> jax.Array:
  """Log-probability (nats) of 8-bit data under a Gaussian integrated over each bin.

  Args:
    x: data rescaled from uint8 {0..255} to [-1, 1]; bins are 2/255 wide, the two
      outer bins extend to -inf and +inf.
    means: Gaussian means, like x.
    log_scales: log standard deviations, like x.

  Returns:
    Log-probabilities like x.
  """
  centred = x - means
  inv_std = jnp.exp(-log_scales)
  cdf_plus = _approx_standard_normal_cdf(inv_std * (centred + 1.0 / 255.0))
  cdf_min = _approx_standard_normal_cdf(inv_std * (centred - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus,
                   jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _at(schedule: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
  """schedule[t] ([T] at [B]) shaped [B, 1, ..., 1] to broadcast against ndim-d arrays."""
  return jnp.asarray(schedule)[t].reshape((-1,) + (1,) * (ndim - 1))


@flax.struct.dataclass
class GaussianDiffusion:
  """A diffusion process over T (possibly respaced) steps; all arrays [T] float32.

  Attributes:
    betas: beta_t of this process (for a respaced one, 1 - abar_t / abar_{t-1}).
    alphas_cumprod: abar_t.
    alphas_cumprod_prev: abar_{t-1}, 1 at t = 0.
    posterior_variance: variance of q(x_{t-1} | x_t, x_0); 0 at t = 0.
    posterior_log_variance_clipped: its log with the t = 0 value replaced by t = 1's.
    posterior_mean_coef1: coefficient of x_0 in the posterior mean.
    posterior_mean_coef2: coefficient of x_t in the posterior mean.
    timestep_map: the original process's index of each step (static).
    base_betas: the original process's float64 betas (static), for exact respacing.
  """
  betas: jax.Array
  alphas_cumprod: jax.Array
  alphas_cumprod_prev: jax.Array
  posterior_variance: jax.Array
  posterior_log_variance_clipped: jax.Array
  posterior_mean_coef1: jax.Array
  posterior_mean_coef2: jax.Array
  timestep_map: tuple[int, ...] = flax.struct.field(pytree_node=False)
  base_betas: tuple[float, ...] = flax.struct.field(pytree_node=False, repr=False)

  @property
  def num_timesteps(self) -> int:
    return len(self.timestep_map)

  def model_timesteps(self, t: jax.Array) -> jax.Array:
    """Indices of this process [B] -> indices of the original process [B] int32."""
    return jnp.asarray(self.timestep_map, jnp.int32)[t]

  def q_sample(self, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """A draw of q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) from given noise."""
    abar = _at(self.alphas_cumprod, t, x0.ndim)
    return jnp.sqrt(abar) * x0 + jnp.sqrt(1.0 - abar) * noise

  def q_posterior_mean_variance(self, x0: jax.Array, x_t: jax.Array, t: jax.Array):
    """q(x_{t-1} | x_t, x_0): (mean like x0, variance and clipped log-variance [B,1,..])."""
    mean = (_at(self.posterior_mean_coef1, t, x0.ndim) * x0
            + _at(self.posterior_mean_coef2, t, x0.ndim) * x_t)
    return (mean, _at(self.posterior_variance, t, x0.ndim),
            _at(self.posterior_log_variance_clipped, t, x0.ndim))

  def predict_x0_from_eps(self, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    abar = _at(self.alphas_cumprod, t, x_t.ndim)
    return jnp.sqrt(1.0 / abar) * x_t - jnp.sqrt(1.0 / abar - 1.0) * eps

  def predict_eps_from_x0(self, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
    abar = _at(self.alphas_cumprod, t, x_t.ndim)
    return (jnp.sqrt(1.0 / abar) * x_t - x0) / jnp.sqrt(1.0 / abar - 1.0)

  def p_mean_variance_from_output(self, model_out: jax.Array, x: jax.Array, t: jax.Array,
                                  clip_denoised: bool = False) -> Dict[str, jax.Array]:
    """p(x_{t-1} | x_t) from a model output already computed.

    Args:
      model_out: [B, ..., 2C]: eps, then v in [-1, 1] interpolating the log-variance
        between the clipped posterior variance (v = -1) and beta_t (v = +1).
      x: x_t [B, ..., C].
      t: [B] int32 indices of this process.
      clip_denoised: clip the x_0 prediction to [-1, 1] (pixel data) before the mean.

    Returns:
      dict of 'mean', 'variance', 'log_variance', 'pred_xstart', each like x.
    """
    channels = x.shape[-1]
    if model_out.shape != x.shape[:-1] + (2 * channels,):
      raise ValueError(f'learned-sigma model output must be {x.shape[:-1] + (2 * channels,)}'
                       f' for x of shape {x.shape}, got {model_out.shape}')
    eps, v = model_out[..., :channels], model_out[..., channels:]
    min_log = _at(self.posterior_log_variance_clipped, t, x.ndim)
    max_log = _at(jnp.log(self.betas), t, x.ndim)
    frac = (v + 1.0) / 2.0
    log_variance = frac * max_log + (1.0 - frac) * min_log
    pred_xstart = self.predict_x0_from_eps(x, t, eps)
    if clip_denoised:
      pred_xstart = jnp.clip(pred_xstart, -1.0, 1.0)
    mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
    return {'mean': mean, 'variance': jnp.exp(log_variance), 'log_variance': log_variance,
            'pred_xstart': pred_xstart}

  def p_mean_variance(self, model_fn: ModelFn, x: jax.Array, t: jax.Array,
                      clip_denoised: bool = False) -> Dict[str, jax.Array]:
    """Calls the model at x_t and returns `p_mean_variance_from_output`'s dict."""
    return self.p_mean_variance_from_output(
        model_fn(x, self.model_timesteps(t)), x, t, clip_denoised)

  def vb_terms_bpd(self, model_out: jax.Array, x0: jax.Array, x_t: jax.Array,
                   t: jax.Array) -> jax.Array:
    """One term of the variational bound in bits per dim, [B].

    KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) for t > 0, and at t = 0 the decoder's
    negative discretised log-likelihood of x_0 (which must then be 8-bit data in [-1, 1]).
    """
    true_mean, _, true_log_variance = self.q_posterior_mean_variance(x0, x_t, t)
    out = self.p_mean_variance_from_output(model_out, x_t, t)
    kl = mean_flat(normal_kl(true_mean, true_log_variance, out['mean'],
                             out['log_variance'])) / math.log(2.0)
    decoder_nll = -mean_flat(discretized_gaussian_log_likelihood(
        x0, out['mean'], 0.5 * out['log_variance'])) / math.log(2.0)
    return jnp.where(t == 0, decoder_nll, kl)

  def training_losses(self, model_fn: ModelFn, x0: jax.Array, t: jax.Array,
                      key: jax.Array) -> Dict[str, jax.Array]:
    """DiT's loss at given timesteps: L_simple on eps plus the vb term for the variance.

    Args:
      model_fn: the learned-sigma model.
      x0: data [B, ..., C].
      t: [B] int32 indices of this process, usually uniform over range(T).
      key: PRNG key for the noise.

    Returns:
      dict of [B] per-example 'loss' (= mse + vb), 'mse', 'vb' (bits per dim).
    """
    noise = jax.random.normal(key, x0.shape, x0.dtype)
    x_t = self.q_sample(x0, t, noise)
    model_out = model_fn(x_t, self.model_timesteps(t))
    channels = x0.shape[-1]
    eps = model_out[..., :channels]
    # The vb term trains only the variance: the mean gets its signal from L_simple.
    frozen = jnp.concatenate([jax.lax.stop_gradient(eps), model_out[..., channels:]], -1)
    vb = self.vb_terms_bpd(frozen, x0, x_t, t)
    mse = mean_flat((noise - eps) ** 2)
    return {'loss': mse + vb, 'mse': mse, 'vb': vb}

  def reverse_scan(self, step_fn, carry, key: jax.Array, noise_shape, dtype=jnp.float32):
    """Runs carry <- step_fn(carry, t [B], noise) for t = T-1, ..., 0 in a scan.

    The noise of each step is a normal draw of `noise_shape` ([B, ..., C]) from its own key
    of jax.random.split(key, T): samplers that carry more than x (e.g. guided ones) draw
    the same noise as the plain loops below.
    """
    def body(carry, inputs):
      i, step_key = inputs
      t = jnp.full(noise_shape[:1], i, jnp.int32)
      return step_fn(carry, t, jax.random.normal(step_key, noise_shape, dtype)), None

    steps = jnp.arange(self.num_timesteps - 1, -1, -1, dtype=jnp.int32)
    carry, _ = jax.lax.scan(body, carry, (steps, jax.random.split(key, self.num_timesteps)))
    return carry

  def p_sample_step(self, out: Dict[str, jax.Array], t: jax.Array,
                    noise: jax.Array) -> jax.Array:
    """One DDPM ancestral step x_t -> x_{t-1} from `p_mean_variance`'s dict at x_t."""
    # The last step (t = 0) returns the mean: no noise is added to the sample.
    std = jnp.where(t[0] > 0, jnp.exp(0.5 * out['log_variance']), 0.0)
    return out['mean'] + std * noise

  def ddim_step(self, out: Dict[str, jax.Array], x: jax.Array, t: jax.Array,
                noise: jax.Array, eta: float = 0.0) -> jax.Array:
    """One DDIM step (Song et al. eq. 12) x_t -> x_{t-1} from `p_mean_variance`'s dict."""
    # eps re-derived from the (possibly clipped) x_0 prediction, as ADM.
    eps = self.predict_eps_from_x0(x, t, out['pred_xstart'])
    abar = _at(self.alphas_cumprod, t, x.ndim)
    abar_prev = _at(self.alphas_cumprod_prev, t, x.ndim)
    sigma = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev))
    mean = (out['pred_xstart'] * jnp.sqrt(abar_prev)
            + jnp.sqrt(1.0 - abar_prev - sigma ** 2) * eps)
    return mean + jnp.where(t[0] > 0, sigma, 0.0) * noise

  def p_sample_loop(self, model_fn: ModelFn, x_init: jax.Array, key: jax.Array,
                    clip_denoised: bool = False) -> jax.Array:
    """DDPM ancestral sampling from x_T = x_init [B, ..., C] down to x_0.

    `clip_denoised` defaults to False as DiT samples latents; use True for pixels.
    """
    def step(x, t, noise):
      return self.p_sample_step(self.p_mean_variance(model_fn, x, t, clip_denoised), t, noise)

    return self.reverse_scan(step, x_init, key, x_init.shape, x_init.dtype)

  def ddim_sample_loop(self, model_fn: ModelFn, x_init: jax.Array, key: jax.Array,
                       eta: float = 0.0, clip_denoised: bool = False) -> jax.Array:
    """DDIM sampling (Song et al. eq. 12) from x_T = x_init; eta = 0 is deterministic."""
    def step(x, t, noise):
      return self.ddim_step(self.p_mean_variance(model_fn, x, t, clip_denoised), x, t, noise,
                            eta)

    return self.reverse_scan(step, x_init, key, x_init.shape, x_init.dtype)


def _diffusion_at(base_betas: np.ndarray, timestep_map: Sequence[int]) -> GaussianDiffusion:
  """The process over the kept original steps `timestep_map`, computed in float64."""
  if len(timestep_map) < 2:
    raise ValueError('a diffusion needs at least 2 timesteps (the clipped posterior '
                     f'log-variance at t = 0 borrows t = 1), got {list(timestep_map)}')
  alphas_cumprod = np.cumprod(1.0 - base_betas)[np.asarray(timestep_map)]
  alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
  betas = 1.0 - alphas_cumprod / alphas_cumprod_prev
  posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
  as32 = lambda a: jnp.asarray(a, jnp.float32)
  return GaussianDiffusion(
      betas=as32(betas),
      alphas_cumprod=as32(alphas_cumprod),
      alphas_cumprod_prev=as32(alphas_cumprod_prev),
      posterior_variance=as32(posterior_variance),
      # The posterior variance is 0 at t = 0: its log takes t = 1's value instead.
      posterior_log_variance_clipped=as32(
          np.log(np.append(posterior_variance[1], posterior_variance[1:]))),
      posterior_mean_coef1=as32(betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)),
      posterior_mean_coef2=as32(
          (1.0 - alphas_cumprod_prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod)),
      timestep_map=tuple(int(i) for i in timestep_map),
      base_betas=tuple(float(b) for b in base_betas))


def respace(diffusion: GaussianDiffusion, section_counts: SectionCounts) -> GaussianDiffusion:
  """The process over a subset of `diffusion`'s steps chosen by `space_timesteps`.

  Kept steps keep their abar; betas become 1 - abar_t / abar_prev_kept, and the model is
  still called with the original indices. '250' keeps 250 evenly spaced steps, 'ddim50'
  50 with DDIM's stride; counts equal to the number of steps give the same process.
  """
  kept = space_timesteps(diffusion.num_timesteps, section_counts)
  return _diffusion_at(np.asarray(diffusion.base_betas, np.float64),
                       [diffusion.timestep_map[i] for i in kept])


def create_diffusion(timestep_respacing: Union[SectionCounts, None] = None,
                     num_timesteps: int = 1000) -> GaussianDiffusion:
  """DiT's diffusion: linear schedule over `num_timesteps`, optionally respaced.

  Args:
    timestep_respacing: None or '' for all steps (training); else as `respace`.
    num_timesteps: steps of the original process.
  """
  diffusion = _diffusion_at(linear_betas(num_timesteps), range(num_timesteps))
  if timestep_respacing in (None, ''):
    return diffusion
  return respace(diffusion, timestep_respacing)
