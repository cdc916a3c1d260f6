"""The GADC objective J(S) of the selection spec, for one class.

    J(S) = POT(S) + w_mom * s_mom * MOM(S) + w_ce * mean_S CE + w_ent * mean_S H
                  + w_kl * KL(pbar_c || pbar_S)

A class is first turned into `ClassStats` (centred features, its n x n cost matrix, the
per-class delta and epsilon, class moments); J of any subset is then a pure function of
the stats and the subset's indices. Subsets are fixed-size index vectors with a row mask
so that the greedy search can score partial subsets with static shapes.

Config fields are read once into `GadcParams`, a hashable record that jit treats as static:
terms with weight 0 are left out of the traced program rather than multiplied by 0.
"""

import dataclasses
import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections

from gadc_jax.selection.problem import ClassProblem
from gadc_jax.transport import partial_ot

# The public release's settings per encoder (spec, "Encoder presets"); everything else
# (kappa 1.05, w_mom 1, s_mom 6, R 30, tau 0) is shared and lives in the defaults.
ENCODER_PRESETS = {
    'inception_v3': {'epsilon': 12.0, 'w_ce': 1200.0},
    'googlenet': {'epsilon': 12.0, 'w_ce': 300.0},
    'resnet34': {'epsilon': 20.0, 'w_ce': 10.0},
    'resnet50': {'epsilon': 20.0, 'w_ce': 10.0},
}

# pbar_S can underflow to 0 in a class the subset never predicts; flooring its log keeps
# the KL term finite (a huge penalty instead of inf).
_LOG_FLOOR = 1e-30


def default_gadc_config(encoder: Optional[str] = None) -> ml_collections.ConfigDict:
  """The spec's defaults, optionally with an encoder preset of `ENCODER_PRESETS` applied."""
  cfg = ml_collections.ConfigDict()
  cfg.kappa = 1.05
  cfg.delta_factor = 0.05
  cfg.epsilon = 20.0
  # Relative epsilon: epsilon_rel * mean class cost; overrides `epsilon` when set.
  cfg.epsilon_rel = ml_collections.config_dict.placeholder(float)
  cfg.w_mom = 1.0
  cfg.s_mom = 6.0
  cfg.w_ce = 10.0
  cfg.w_ent = 0.0
  cfg.w_kl = 0.0
  cfg.temperature = 1.0
  cfg.rounds = 30            # R: swap-refinement rounds; 0 disables refinement.
  cfg.tau = 0.0              # candidate filter on max_k p_i(k), applied by the caller.
  cfg.mode = 'fast'          # 'fast' (screened, warm-started) or 'exhaustive' (spec).
  cfg.sinkhorn_threshold = partial_ot.DEFAULT_THRESHOLD
  cfg.sinkhorn_max_iterations = partial_ot.DEFAULT_MAX_ITERATIONS
  cfg.min_improvement = 1e-8  # a swap must lower J by more than this.
  cfg.shortlist = 32         # fast mode: exact solves per greedy step / refinement round.
  if encoder is not None:
    if encoder not in ENCODER_PRESETS:
      raise ValueError(f'unknown encoder preset {encoder!r}; '
                       f'known: {sorted(ENCODER_PRESETS)}')
    cfg.update(ENCODER_PRESETS[encoder])
  return cfg


@dataclasses.dataclass(frozen=True)
class GadcParams:
  """The config as plain Python numbers: hashable, so jit can treat it as static."""
  kappa: float = 1.05
  delta_factor: float = 0.05
  epsilon: float = 20.0
  epsilon_rel: Optional[float] = None
  w_mom: float = 1.0
  s_mom: float = 6.0
  w_ce: float = 10.0
  w_ent: float = 0.0
  w_kl: float = 0.0
  temperature: float = 1.0
  rounds: int = 30
  mode: str = 'fast'
  sinkhorn_threshold: float = partial_ot.DEFAULT_THRESHOLD
  sinkhorn_max_iterations: int = partial_ot.DEFAULT_MAX_ITERATIONS
  min_improvement: float = 1e-8
  shortlist: int = 32

  @classmethod
  def from_config(cls, cfg) -> 'GadcParams':
    """Reads the fields of any attribute object (ConfigDict, namespace); missing ones default."""
    values = {}
    for field in dataclasses.fields(cls):
      value = getattr(cfg, field.name, field.default)
      if value is not None:  # ints from the command line become the field's type
        value = float(value) if field.default is None else type(field.default)(value)
      values[field.name] = value
    params = cls(**values)
    if params.mode not in ('fast', 'exhaustive'):
      raise ValueError(f"mode must be 'fast' or 'exhaustive', got {params.mode!r}")
    if params.kappa < 1.0:
      raise ValueError(f'kappa must be >= 1, got {params.kappa}')
    return params


class ClassStats(NamedTuple):
  """What J needs about one class (n padded images, D features, K classifier classes).

  features: [n, D] features minus the class mean (distances are shift-invariant; centring
            keeps the running sums of the fast search well conditioned in float32).
  cost:     [n, n] squared distances between the class's images.
  mask:     [n]    bool real images.
  candidate:[n]    bool may be selected.
  ce, entropy: [n] per-image CE and entropy.
  probs:    [n, K] tempered probabilities (p^(1/T) renormalised).
  var_c:    [D]    unbiased class variance (the class mean is 0 after centring).
  pbar_c:   [K]    class mean of the tempered probabilities.
  delta, epsilon: [] dummy-row cost and entropic regularisation of this class.
  """
  features: jax.Array
  cost: jax.Array
  mask: jax.Array
  candidate: jax.Array
  ce: jax.Array
  entropy: jax.Array
  probs: jax.Array
  var_c: jax.Array
  pbar_c: jax.Array
  delta: jax.Array
  epsilon: jax.Array


def tempered(probs: jax.Array, temperature: float) -> jax.Array:
  """p^(1/T) renormalised per row, in the log domain so that small p do not underflow."""
  if temperature == 1.0:
    return probs
  return jax.nn.softmax(jnp.log(probs) / temperature, axis=-1)


def class_stats(problem: ClassProblem, params: GadcParams) -> ClassStats:
  """Per-class precomputation for one unbatched (possibly padded) problem."""
  mask = problem.mask
  w = mask.astype(jnp.float32)
  count = jnp.sum(w)
  mean = jnp.sum(problem.features * w[:, None], axis=0) / count
  x = (problem.features - mean) * w[:, None]
  var_c = jnp.sum(x * x, axis=0) / jnp.maximum(count - 1.0, 1.0)
  # Images are their own nearest point; exact zeros keep duplicates' rounding out of it.
  cost = partial_ot.pairwise_sq_dists(x, x) * (1.0 - jnp.eye(x.shape[0]))
  # Padding rows are all-zero probabilities; give them a harmless row before tempering.
  probs = tempered(jnp.where(mask[:, None], problem.probs, 1.0), params.temperature)
  probs = probs * w[:, None]
  return ClassStats(
      features=x, cost=cost, mask=mask, candidate=problem.candidate & mask,
      ce=problem.ce, entropy=problem.entropy, probs=probs, var_c=var_c,
      pbar_c=jnp.sum(probs, axis=0) / count,
      delta=partial_ot.class_delta(cost, mask, params.delta_factor),
      epsilon=partial_ot.resolve_epsilon(cost, mask, params.epsilon, params.epsilon_rel))


def mom_from_moments(mean: jax.Array, var: jax.Array, var_c: jax.Array) -> jax.Array:
  """MOM for subset moments [..., D] against the class (mean 0 after centring, var_c [D])."""
  mean_gap = 1.25 * jnp.sum(mean * mean, axis=-1)
  var_gap = jnp.sum(var + var_c - 2.0 * jnp.sqrt(jnp.maximum(var * var_c, 0.0)), axis=-1)
  return mean_gap + var_gap


def kl_to_class(pbar_c: jax.Array, pbar_s: jax.Array) -> jax.Array:
  """KL(pbar_c || pbar_S) over the last axis; 0 log 0 = 0, log pbar_S floored."""
  log_ratio = (jnp.log(jnp.maximum(pbar_c, _LOG_FLOOR))
               - jnp.log(jnp.maximum(pbar_s, _LOG_FLOOR)))
  return jnp.sum(jnp.where(pbar_c > 0, pbar_c * log_ratio, 0.0), axis=-1)


class SideSums(NamedTuple):
  """Running sums over a subset of everything J needs besides POT.

  count [], feat [D], feat_sq [D] (centred features), ce [], entropy [], probs [K].
  Shapes gain leading axes when sums are formed for many subsets at once.
  """
  count: jax.Array
  feat: jax.Array
  feat_sq: jax.Array
  ce: jax.Array
  entropy: jax.Array
  probs: jax.Array


def side_sums(stats: ClassStats, idx: jax.Array, row_mask: jax.Array) -> SideSums:
  """SideSums of the rows idx [m] that row_mask [m] marks active."""
  w = row_mask.astype(jnp.float32)
  x = stats.features[idx] * w[:, None]
  return SideSums(count=jnp.sum(w), feat=jnp.sum(x, axis=0),
                  feat_sq=jnp.sum(x * x, axis=0), ce=jnp.dot(w, stats.ce[idx]),
                  entropy=jnp.dot(w, stats.entropy[idx]),
                  probs=w @ stats.probs[idx])


def one_pass_moments(sums: SideSums):
  """Subset mean and unbiased variance [..., D] from running sums (0 variance for one row)."""
  k = sums.count[..., None]
  mean = sums.feat / k
  var = jnp.maximum(sums.feat_sq - k * mean * mean, 0.0) / jnp.maximum(k - 1.0, 1.0)
  return mean, var


def side_terms(stats: ClassStats, sums: SideSums, params: GadcParams,
               moments=None) -> jax.Array:
  """Every term of J but POT (any leading batch shape).

  `moments` (mean, var) override the one-pass moments of `sums`; exact evaluation passes
  two-pass ones, screening uses the cheap one-pass form.
  """
  k = sums.count
  total = jnp.zeros_like(k)
  if params.w_mom != 0.0:
    mean, var = one_pass_moments(sums) if moments is None else moments
    total += params.w_mom * params.s_mom * mom_from_moments(mean, var, stats.var_c)
  if params.w_ce != 0.0:
    total += params.w_ce * sums.ce / k
  if params.w_ent != 0.0:
    total += params.w_ent * sums.entropy / k
  if params.w_kl != 0.0:
    total += params.w_kl * kl_to_class(stats.pbar_c, sums.probs / k[..., None])
  return total


class Evaluation(NamedTuple):
  """J of one subset with the pieces the search reuses.

  objective []; pot []: the POT term; ot: the partial OT solution (warm starts).
  """
  objective: jax.Array
  pot: jax.Array
  ot: partial_ot.PartialOTOutput


def evaluate(stats: ClassStats, idx: jax.Array, row_mask: jax.Array, params: GadcParams,
             init=None) -> Evaluation:
  """J of the subset idx [m] (active rows row_mask [m]) with a converged partial OT solve.

  The MOM term is computed in two passes from the gathered features (the fast search's
  one-pass running sums are only used to screen).
  """
  ot = partial_ot.solve(
      stats.cost[idx], delta=stats.delta, epsilon=stats.epsilon, kappa=params.kappa,
      col_mask=stats.mask, row_mask=row_mask, threshold=params.sinkhorn_threshold,
      max_iterations=params.sinkhorn_max_iterations, init=init)
  sums = side_sums(stats, idx, row_mask)
  w = row_mask.astype(jnp.float32)[:, None]
  mean = sums.feat / sums.count
  centred = (stats.features[idx] - mean) * w
  var = jnp.sum(centred * centred, axis=0) / jnp.maximum(sums.count - 1.0, 1.0)
  terms = side_terms(stats, sums, params, moments=(mean, var))
  return Evaluation(objective=ot.value + terms, pot=ot.value, ot=ot)


def objective_of(problem: ClassProblem, indices, cfg) -> float:
  """The converged objective J of a selection of one unbatched class (any method's).

  Args:
    problem: one class (padded or not).
    indices: [m] ints into the class's rows; they must be real images.
    cfg: ConfigDict (or attribute object) with the GADC fields.
  Returns:
    J as a Python float.
  """
  params = GadcParams.from_config(cfg)
  idx = jnp.asarray(indices, jnp.int32)
  return float(_objective_jit(jax.tree.map(jnp.asarray, problem), idx, params))


@functools.partial(jax.jit, static_argnums=2)
def _objective_jit(problem, idx, params):
  stats = class_stats(problem, params)
  return evaluate(stats, idx, jnp.ones(idx.shape, bool), params).objective
