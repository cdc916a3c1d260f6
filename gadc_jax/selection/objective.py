"""The GADC objective J(S) of the selection spec, for one class.

    J(S) = w_pot * POT(S) + w_mom * s_mom * MOM(S) + w_ce * mean_S CE + w_ent * mean_S H
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
import numpy as np

from gadc_jax import defaults
from gadc_jax import distances
from gadc_jax import validation
from gadc_jax.selection.problem import ClassProblem, pad_problem
from gadc_jax.transport import partial_ot

# pbar_S can underflow to 0 in a class the subset never predicts; flooring its log keeps
# the KL term finite (a huge penalty instead of inf).
_LOG_FLOOR = 1e-30


@dataclasses.dataclass(frozen=True)
class GadcParams:
  """The config as plain Python numbers: hashable, so jit can treat it as static."""
  kappa: float = 1.05
  delta_factor: float = 0.05
  epsilon: float = 20.0
  epsilon_rel: Optional[float] = None
  w_pot: float = 1.0
  w_mom: float = 1.0
  s_mom: float = 6.0
  w_ce: float = 10.0
  w_ent: float = 0.0
  w_kl: float = 0.0
  temperature: float = 1.0
  rounds: int = 30
  mode: str = 'fast'
  sinkhorn_threshold: float = defaults.SINKHORN_THRESHOLD
  sinkhorn_max_iterations: int = defaults.SINKHORN_MAX_ITERATIONS
  shortlist: int = 32

  @classmethod
  def from_config(cls, cfg, where: str = 'config.select.gadc') -> 'GadcParams':
    """Reads the fields of any attribute object (ConfigDict, namespace); missing ones default.

    The values are checked first (`check_config`; `where` names the section in its errors).
    """
    raw = {field.name: getattr(cfg, field.name, field.default)
           for field in dataclasses.fields(cls)}
    check_config(raw, where)
    values = {}
    for field in dataclasses.fields(cls):
      value = raw[field.name]
      if value is not None:  # ints from the command line become the field's type
        value = float(value) if field.default is None else type(field.default)(value)
      values[field.name] = value
    return cls(**values)


MODES = ('fast', 'exhaustive')


def check_config(cfg, where: str = 'config.select.gadc') -> None:
  """One ValueError naming the first GADC option of `cfg` (item access) that is out of range.

  The select job calls it before any work, whatever its method: every selection is scored
  with this objective.
  """
  validation.require(
      cfg, where, positive_ints=('shortlist', 'sinkhorn_max_iterations'),
      non_negative_ints=('rounds',),
      positive=('epsilon', 'temperature', 'sinkhorn_threshold', 'kappa'),
      non_negative=('delta_factor', 'w_pot', 'w_mom', 's_mom', 'w_ce', 'w_ent', 'w_kl'))
  if 'tau' in cfg:  # the select job's candidate filter: in the config, not in GadcParams.
    validation.require(cfg, where, fractions=('tau',))
  if cfg['kappa'] < 1:
    raise ValueError(f'{where}.kappa must be >= 1 (a point receives at most kappa/n), got '
                     f'{cfg["kappa"]!r}')
  if cfg['epsilon_rel'] is not None:
    validation.require(cfg, where, positive=('epsilon_rel',))
  if cfg['mode'] not in MODES:
    raise ValueError(f'{where}.mode must be one of {", ".join(MODES)}, got {cfg["mode"]!r}')


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
  cost = distances.pairwise_sq_dists(x, x) * (1.0 - jnp.eye(x.shape[0]))
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

  objective []; pot []: the POT term; ot: the partial OT solution (warm starts);
  converged [] bool: the solve reached sinkhorn_threshold within sinkhorn_max_iterations
  (if not, objective and pot are those of the capped iterate).
  """
  objective: jax.Array
  pot: jax.Array
  ot: partial_ot.PartialOTOutput
  converged: jax.Array


def evaluate(stats: ClassStats, idx: jax.Array, row_mask: jax.Array, params: GadcParams,
             init=None) -> Evaluation:
  """J of the subset idx [m] (active rows row_mask [m]) with a partial OT solve.

  The solve runs until the marginal error falls below sinkhorn_threshold or
  sinkhorn_max_iterations is reached; `converged` says which. The MOM term is computed in
  two passes from the gathered features (the fast search's one-pass running sums are only
  used to screen).
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
  return Evaluation(objective=params.w_pot * ot.value + terms, pot=ot.value, ot=ot,
                    converged=ot.converged)


class Score(NamedTuple):
  """J of one selection and whether its partial OT solve converged.

  objective: J as a Python float; converged: the solve reached sinkhorn_threshold within
  sinkhorn_max_iterations (if False, J is that of the capped iterate).
  """
  objective: float
  converged: bool


def objective_of(problem: ClassProblem, indices, cfg) -> Score:
  """The objective J of a selection of one unbatched class (any method's).

  The partial OT solve is cold-started and runs to sinkhorn_threshold or to
  sinkhorn_max_iterations, whichever comes first; the result reports which.

  Args:
    problem: one class (padded or not).
    indices: [m] ints into the class's rows; they must be real images.
    cfg: ConfigDict (or attribute object) with the GADC fields.
  Returns:
    Score(objective, converged) as Python values.
  """
  params = GadcParams.from_config(cfg)
  idx = jnp.asarray(indices, jnp.int32)
  # Padded (masked) to the bucket, so that classes of nearby sizes share one compile.
  padded = pad_problem(problem, partial_ot.bucket_size(len(problem.mask)))
  value, converged = _objective_jit(jax.tree.map(jnp.asarray, padded), idx, params)
  return Score(objective=float(value), converged=bool(converged))


@functools.partial(jax.jit, static_argnums=2)
def _objective_jit(problem, idx, params):
  stats = class_stats(problem, params)
  ev = evaluate(stats, idx, jnp.ones(idx.shape, bool), params)
  return ev.objective, ev.converged


# The range of `cost_over_epsilon` the release's absolute epsilon presets were checked on
# here: the spec's reference class (0.27 * N(0, 1) in 2048-d, the ResNet-50 preset's
# epsilon 20) gives 14.9; the digits run (configs/digits.py, epsilon 20, per class) gives
# 3.6 to 8.8 with its trained CNN and 0.14 to 0.37 in its smoke form (20 classifier steps,
# small features). Ten times past either end is "far": below, epsilon spreads every plan
# over the whole class and POT stops telling subsets apart; above, Sinkhorn needs many more
# iterations (features times 1e3 made the selection 6x slower) and nears where the spec saw
# the release's solver return NaN. A relative epsilon (epsilon_rel) has no such scale.
CALIBRATED_COST_OVER_EPSILON = (0.14, 14.9)
_FAR = 10.0


def cost_over_epsilon(features: np.ndarray, cfg) -> float:
  """Median of a class's n x n cost (diagonal included, as delta's) over the epsilon its POT
  term is solved with: how sharp the entropic plan is, whatever the feature scale.

  NumPy, not jit: classes of every size would each compile a program for a number this cheap.
  """
  params = GadcParams.from_config(cfg)
  x = np.asarray(features, np.float32)
  x = x - x.mean(axis=0)
  cost = distances.pairwise_sq_dists(x, x)
  np.fill_diagonal(cost, 0.0)
  flat = cost.ravel()
  median = np.partition(flat, (flat.size - 1) // 2)[(flat.size - 1) // 2]  # lower median
  epsilon = (params.epsilon if params.epsilon_rel is None
             else params.epsilon_rel * float(flat.mean()))
  return float(median / epsilon)


def epsilon_scale_warning(ratios: dict[int, float], cfg) -> str | None:
  """A warning naming the classes whose `cost_over_epsilon` is far outside the calibrated
  range (with their numbers), or None. Only an absolute epsilon gets one."""
  if getattr(cfg, 'epsilon_rel', None) is not None:
    return None
  low, high = CALIBRATED_COST_OVER_EPSILON
  far = {c: r for c, r in ratios.items() if not low / _FAR <= r <= high * _FAR}
  if not far:
    return None
  shown = ', '.join(f'class {c}: {r:.3g}' for c, r in far.items())
  return (f'median cost / epsilon is far outside the range {low:g} to {high:g} that the '
          f'absolute epsilon {cfg.epsilon:g} of the presets was calibrated on ({shown}): the '
          'features have another scale than the preset assumes, which changes the selection '
          'and its speed. Set select.gadc.epsilon_rel (e.g. 0.05: epsilon relative to the '
          "class's mean cost, the scale-free choice) or an epsilon fit to this scale.")
