"""SiT's transport: interpolant paths, model predictions, losses, ODE and SDE samplers.

Convention (SiT's `ICPlan` / `GVPCPlan`): time runs from noise to data,

    x_t = alpha_t * x1 + sigma_t * x0,   x0 ~ N(0, I) the noise, x1 the data,

so t = 0 is pure noise and t = 1 is data, and samplers integrate forward from t = 0.
  linear: alpha_t = t,            sigma_t = 1 - t
  gvp:    alpha_t = sin(pi t / 2), sigma_t = cos(pi t / 2)
The model `model_fn(x [B, ...], t [B] float32 in [0, 1]) -> [B, ...]` predicts one of
  velocity: u_t = alpha'_t x1 + sigma'_t x0 (SiT's default);
  noise:    x0;
  score:    grad log p_t(x) = -E[x0 | x_t] / sigma_t.
Losses are SiT's unweighted ones (its `loss_weight=None`, the default).
"""

import dataclasses
import math
from typing import Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp

ModelFn = Callable[[jax.Array, jax.Array], jax.Array]

PATHS = ('linear', 'gvp')
PREDICTIONS = ('velocity', 'score', 'noise')
ODE_METHODS = ('euler', 'heun')


def path_coefficients(path: str, t: jax.Array) -> Tuple[jax.Array, ...]:
  """(alpha_t, alpha'_t, sigma_t, sigma'_t) of `path`, each shaped like t."""
  if path == 'linear':
    return t, jnp.ones_like(t), 1.0 - t, -jnp.ones_like(t)
  if path == 'gvp':
    half_pi = math.pi / 2
    return (jnp.sin(half_pi * t), half_pi * jnp.cos(half_pi * t),
            jnp.cos(half_pi * t), -half_pi * jnp.sin(half_pi * t))
  raise ValueError(f'unknown path {path!r}; expected one of {PATHS}')


@dataclasses.dataclass(frozen=True)
class Transport:
  """A path and a model prediction type; hashable, so it may be a static jit argument.

  Attributes:
    path: 'linear' or 'gvp'.
    prediction: 'velocity', 'score' or 'noise'.
    train_eps: training times are uniform on [train_eps, 1 - train_eps].
    sample_eps: samplers start at t = sample_eps (and the ODE stops at 1 - sample_eps).
  """
  path: str = 'linear'
  prediction: str = 'velocity'
  train_eps: float = 0.0
  sample_eps: float = 0.0

  def __post_init__(self):
    if self.path not in PATHS:
      raise ValueError(f'unknown path {self.path!r}; expected one of {PATHS}')
    if self.prediction not in PREDICTIONS:
      raise ValueError(f'unknown prediction {self.prediction!r}; expected one of '
                       f'{PREDICTIONS}')

  def _coefficients(self, t: jax.Array, ndim: int) -> Tuple[jax.Array, ...]:
    """Path coefficients at t [B], shaped [B, 1, ..., 1] for ndim-d arrays."""
    return tuple(c.reshape((-1,) + (1,) * (ndim - 1))
                 for c in path_coefficients(self.path, t))

  def interpolate(self, t: jax.Array, x0: jax.Array, x1: jax.Array):
    """(x_t, u_t): the point on the path and its velocity; t [B], x0 noise, x1 data."""
    alpha, d_alpha, sigma, d_sigma = self._coefficients(t, x1.ndim)
    return alpha * x1 + sigma * x0, d_alpha * x1 + d_sigma * x0

  # Conversions between predictions, all through the noise: with x = alpha x1 + sigma x0
  # and u = alpha' x1 + sigma' x0, eliminating x1 gives
  #   x0 = (alpha u - alpha' x) / (alpha sigma' - alpha' sigma),
  # whose denominator is -1 (linear) or -pi/2 (gvp): never 0. The way back divides by
  # alpha, singular at t = 0, which is why score and noise models keep off t = 0.

  def noise_from_velocity(self, velocity: jax.Array, x: jax.Array, t: jax.Array) -> jax.Array:
    alpha, d_alpha, sigma, d_sigma = self._coefficients(t, x.ndim)
    return (alpha * velocity - d_alpha * x) / (alpha * d_sigma - d_alpha * sigma)

  def velocity_from_noise(self, noise: jax.Array, x: jax.Array, t: jax.Array) -> jax.Array:
    alpha, d_alpha, sigma, d_sigma = self._coefficients(t, x.ndim)
    return (d_alpha * x + (alpha * d_sigma - d_alpha * sigma) * noise) / alpha

  def score_from_noise(self, noise: jax.Array, x: jax.Array, t: jax.Array) -> jax.Array:
    return -noise / self._coefficients(t, x.ndim)[2]

  def noise_from_score(self, score: jax.Array, x: jax.Array, t: jax.Array) -> jax.Array:
    return -score * self._coefficients(t, x.ndim)[2]

  def to_noise(self, model_out: jax.Array, x: jax.Array, t: jax.Array) -> jax.Array:
    """The model's prediction, whatever its type, as a noise prediction."""
    if self.prediction == 'velocity':
      return self.noise_from_velocity(model_out, x, t)
    if self.prediction == 'score':
      return self.noise_from_score(model_out, x, t)
    return model_out

  def to_velocity(self, model_out: jax.Array, x: jax.Array, t: jax.Array) -> jax.Array:
    """The model's prediction as a velocity: the probability-flow ODE's drift."""
    if self.prediction == 'velocity':
      return model_out
    return self.velocity_from_noise(self.to_noise(model_out, x, t), x, t)

  def to_score(self, model_out: jax.Array, x: jax.Array, t: jax.Array) -> jax.Array:
    """The model's prediction as a score."""
    if self.prediction == 'score':
      return model_out
    return self.score_from_noise(self.to_noise(model_out, x, t), x, t)

  def training_losses(self, model_fn: ModelFn, x1: jax.Array,
                      key: jax.Array) -> Dict[str, jax.Array]:
    """SiT's loss: t ~ U[train_eps, 1 - train_eps], the prediction's squared error.

    Args:
      model_fn: the model.
      x1: data [B, ...].
      key: PRNG key for t and the noise.

    Returns:
      dict of [B] per-example 'loss' and the sampled times 't'.
    """
    t_key, noise_key = jax.random.split(key)
    t = jax.random.uniform(t_key, x1.shape[:1], jnp.float32,
                           self.train_eps, 1.0 - self.train_eps)
    x0 = jax.random.normal(noise_key, x1.shape, x1.dtype)
    x_t, u_t = self.interpolate(t, x0, x1)
    out = model_fn(x_t, t)
    if self.prediction == 'velocity':
      error = out - u_t
    elif self.prediction == 'noise':
      error = out - x0
    else:  # score = -x0 / sigma_t, compared after scaling by sigma_t as SiT.
      error = out * self._coefficients(t, x1.ndim)[2] + x0
    return {'loss': jnp.mean(error ** 2, axis=tuple(range(1, x1.ndim))), 't': t}

  def _velocity_fn(self, model_fn: ModelFn) -> ModelFn:
    return lambda x, t: self.to_velocity(model_fn(x, t), x, t)

  def ode_sample(self, model_fn: ModelFn, x_init: jax.Array, num_steps: int,
                 method: str = 'euler') -> jax.Array:
    """Integrates the probability-flow ODE dx/dt = v(x, t) from noise to data.

    Args:
      model_fn: the model.
      x_init: noise at t = sample_eps, [B, ...].
      num_steps: as SiT's --num-sampling-steps: the points of the uniform time grid on
        [sample_eps, 1 - sample_eps], i.e. num_steps - 1 integration steps.
      method: 'euler' (1 model call a step) or 'heun' (2: Euler predictor, trapezoidal
        corrector).

    Returns:
      Samples at t = 1 - sample_eps, like x_init.
    """
    if method not in ODE_METHODS:
      raise ValueError(f'unknown ODE method {method!r}; expected one of {ODE_METHODS}')
    velocity = self._velocity_fn(model_fn)
    times = jnp.linspace(self.sample_eps, 1.0 - self.sample_eps, num_steps)
    batch = x_init.shape[:1]

    def step(x, t_pair):
      t_cur, t_next = jnp.full(batch, t_pair[0]), jnp.full(batch, t_pair[1])
      dt = t_pair[1] - t_pair[0]
      k1 = velocity(x, t_cur)
      if method == 'euler':
        return x + dt * k1, None
      k2 = velocity(x + dt * k1, t_next)
      return x + 0.5 * dt * (k1 + k2), None

    x, _ = jax.lax.scan(step, x_init, jnp.stack([times[:-1], times[1:]], axis=1))
    return x

  def sde_sample(self, model_fn: ModelFn, x_init: jax.Array, num_steps: int,
                 key: jax.Array, diffusion_norm: float = 1.0,
                 last_step_size: Optional[float] = 0.04) -> jax.Array:
    """Euler-Maruyama on SiT's reverse SDE with its default diffusion coefficient.

        dx = [v(x, t) + w_t score(x, t)] dt + sqrt(2 w_t) dW,   w_t = norm * sigma_t,

    SiT's `--diffusion-form sigma` (default): the noise injected shrinks with the path's
    noise level and vanishes at the data end. Every w_t gives the same marginals p_t.

    Args:
      model_fn: the model.
      x_init: noise at t = sample_eps, [B, ...].
      num_steps: points of the time grid on [sample_eps, 1 - last_step_size]: num_steps - 1
        stochastic steps, then the last step (SiT's count; num_steps model calls in all).
      key: PRNG key for the Brownian increments.
      diffusion_norm: SiT's --diffusion-norm.
      last_step_size: SiT's 'Mean' last step (default 0.04, its --last-step-size): one
        noiseless Euler step of the SDE drift over the last interval to t = 1, which
        denoises (the score is singular at t = 1 for the linear path). None or 0: SiT's
        last_step=None, the grid ending at 1 - sample_eps with no extra step (so not for
        sample_eps = 0: the score is singular at t = 1). A Python float (static under
        jit), as num_steps.

    Returns:
      Samples at t = 1 (or 1 - sample_eps without a last step), like x_init.
    """
    last_step_size = last_step_size or 0.0
    t_end = 1.0 - (last_step_size if last_step_size > 0 else self.sample_eps)
    times = jnp.linspace(self.sample_eps, t_end, num_steps)
    dt = times[1] - times[0]
    batch = x_init.shape[:1]

    def drift_and_w(x, t):
      out = model_fn(x, t)
      w = diffusion_norm * self._coefficients(t, x.ndim)[2]
      return self.to_velocity(out, x, t) + w * self.to_score(out, x, t), w

    def step(x, inputs):
      t_scalar, step_key = inputs
      drift, w = drift_and_w(x, jnp.full(batch, t_scalar))
      noise = jax.random.normal(step_key, x.shape, x.dtype)
      return x + drift * dt + jnp.sqrt(2.0 * w * dt) * noise, None

    x, _ = jax.lax.scan(step, x_init, (times[:-1], jax.random.split(key, num_steps - 1)))
    if last_step_size > 0:
      x = x + drift_and_w(x, jnp.full(batch, t_end))[0] * last_step_size
    return x


def create_transport(path: str = 'linear', prediction: str = 'velocity',
                     train_eps: Optional[float] = None,
                     sample_eps: Optional[float] = None) -> Transport:
  """A `Transport` with SiT's default epsilons (its train.py / sample.py arguments).

  Velocity models on linear and GVP paths are well defined on all of [0, 1]: both
  epsilons 0. Score and noise models convert through 1/alpha_t and 1/sigma_t: SiT trains
  them on [1e-3, 1 - 1e-3] and samples from 1e-3 (its create_transport and check_interval;
  its 1e-5 is the VP path's, which is not here).
  """
  default_train, default_sample = (0.0, 0.0) if prediction == 'velocity' else (1e-3, 1e-3)
  return Transport(path=path, prediction=prediction,
                   train_eps=default_train if train_eps is None else train_eps,
                   sample_eps=default_sample if sample_eps is None else sample_eps)
