"""GADC selection: greedy construction then swap refinement of the objective J.

Greedy is a `lax.scan` over picks and refinement a `lax.while_loop` over rounds, for one
class; `select` vmaps that over a padded batch of classes and optionally shards the batch
over the "classes" axis of a device mesh.

Two modes (config `mode`):
- 'exhaustive' is the spec's definition: every candidate of a greedy step and every swap
  (i in S, c not in S) of a round is scored with a cold-started solve.
- 'fast' (default) screens and re-solves only a short list. Given the current solution's
  potentials, the row potential of a candidate c is a soft c-transform of the column
  potentials g (one log-sum-exp over n per candidate) and its row of the plan a softmax, so
  POT(S + c) or POT(S - i + c) has a first-order estimate for every candidate at once; for a
  swap, g is first re-balanced without row i (one column update), so that c sees the columns
  that i frees. Every other term of J is exact from running sums. The `shortlist` best
  estimates are then solved exactly, warm-started from the current potentials, and the best
  exact J decides. The first pick has no potentials to screen with and is scored exactly.
  Fast mode's greedy is the public release's, which scores a candidate by its own CE rather
  than the subset mean: one-swap refinement stops in a local optimum, and on the reference
  class the release's path leads to a better one (478.42 against 479.51 from the spec's).
  The screen can miss an improving swap. A screened round measures the screen's error on
  its short list; when even the estimates off the list, moved down by a safe multiple of
  that error's spread, cannot improve, the list vouches for them. Otherwise the subset
  goes through rounds that solve every swap (warm-started) until none improves. The
  result is a 1-swap local optimum, as in exhaustive mode (see `select_one`); how far the
  vouching can be trusted is tested against brute force (tests/selection/test_gadc.py).

Ties break to the lowest index: the lowest candidate in a greedy step, the lowest
(slot of i in S, c) pair in a round. Padding rows are never candidates and carry no mass.
A swap is taken only if it lowers J by more than the solver can resolve
(`improvement_tolerance`), in both modes.

Every exact solve runs to sinkhorn_threshold or stops at sinkhorn_max_iterations. The
search counts the solves that stopped at the cap among those whose result it uses (valid
candidates and swaps; the solves that static shapes force on padding, excluded or selected
rows are discarded and not counted, so the count does not depend on padding), and `select`
reports the count per class.
"""

import functools
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from gadc_jax import batching
from gadc_jax.selection import objective as obj
from gadc_jax.selection.output import SelectionOutput
from gadc_jax.selection.problem import ClassProblem

# Subsets solved at once where every candidate or swap is (memory: this many (m+1) x n
# solves).
_SOLVE_BATCH = 64
# float32 ulps of |J| below which two values of J are not told apart (`improvement_tolerance`).
_ULPS = 8
# A screened round vouches for the swaps it did not solve when even their estimates, moved
# down by this many times the spread of the screen's errors on the solved ones (and by
# _SCREEN_FLOOR of |J|), stay above the improvement bar (`_solve_shortlist`).
_SCREEN_SAFETY = 2.0
_SCREEN_FLOOR = 1e-4
# Candidates whose swapped sums [m, D] are formed at once in a screen: a block's features
# stay in cache while every slot reads them.
_SCREEN_BLOCK = 64
# Fewer solved entries than this say too little about the spread to vouch for the rest.
_SCREEN_SAMPLE = 16


class _State(NamedTuple):
  """A subset being built: idx [m] int32 with active slots row_mask [m], in_set [n] bool,
  its exact evaluation (potentials and plan for warm starts and screening), and
  unconverged [] int32, the search's exact solves so far that stopped at the cap."""
  idx: jax.Array
  row_mask: jax.Array
  in_set: jax.Array
  ev: obj.Evaluation
  unconverged: jax.Array


def _argmin_lowest(values: jax.Array, keys: jax.Array) -> jax.Array:
  """Position of the smallest value [K]; among equal values, the one with the lowest key."""
  best = jnp.min(values)
  return jnp.argmin(jnp.where(values == best, keys, jnp.iinfo(jnp.int32).max))


def _capped(converged: jax.Array, used: jax.Array) -> jax.Array:
  """[] int32: how many of the solves that used [K] marks stopped at the cap (converged [K])."""
  return jnp.sum(used & ~converged, dtype=jnp.int32)


def _state(stats, idx, row_mask, params, unconverged, init=None) -> _State:
  """The subset's state from an exact solve (cold, or warm from init), added to the
  `unconverged` [] count."""
  in_set = _membership(idx, row_mask, stats.mask.shape[0])
  ev = obj.evaluate(stats, idx, row_mask, params, init)
  return _State(idx, row_mask, in_set, ev, unconverged + _capped(ev.converged, True))


def _scored(stats, idx, row_mask, params, init=None):
  """(J [], converged [] bool) of an exact solve: what a scan over candidates keeps."""
  ev = obj.evaluate(stats, idx, row_mask, params, init)
  return ev.objective, ev.converged


def _take(tree, j):
  return jax.tree.map(lambda x: x[j], tree)


def _score_all(fn, xs: jax.Array) -> jax.Array:
  return jax.lax.map(fn, xs, batch_size=_SOLVE_BATCH)


def _first_pick(stats: obj.ClassStats, m: int, params: obj.GadcParams) -> _State:
  """S = {argmin_c J({c})}, every candidate scored exactly (both modes)."""
  n = stats.mask.shape[0]
  one = jnp.ones((1,), bool)
  # One-row problems are small enough to solve for all n candidates in a single batch.
  scores, converged = jax.vmap(lambda c: _scored(stats, c[None], one, params))(
      jnp.arange(n))
  c = jnp.argmin(jnp.where(stats.candidate, scores, jnp.inf)).astype(jnp.int32)
  idx = jnp.zeros((m,), jnp.int32).at[0].set(c)
  return _state(stats, idx, jnp.arange(m) == 0, params,
                _capped(converged, stats.candidate))


# Column shifts more than this far (in units of epsilon) below a variant's largest are
# dropped from its soft rows: exp(-80) is below float32's resolution of any sum they join.
_SHIFT_RANGE = 80.0


def _soft_rows(stats: obj.ClassStats, g: jax.Array, shifts: jax.Array):
  """Every image c as a new row against the column potentials g + eps * shifts[v], for
  each of V variants of g at once.

  g [n]; shifts [V, n] (finite on real columns). Returns lse [V, n] = LSE_j (g_j + eps
  shifts_vj - C_cj) / eps (the row potential is eps * (log a - lse)) and cost [V, n] =
  sum_j softmax_j(...) C_cj, the transport cost of one unit of its mass. In the exp domain
  a shift scales column j, so one exp pass over the n x n kernel and two [n, n] x [n, V]
  products serve every variant. An image's own column (cost 0) is left out: it would draw
  the whole row, but it takes only kappa/n of the row's mass of 1/m or more, and the rest
  goes where the softmax over the other columns sends it.
  """
  n = stats.mask.shape[0]
  logits = jnp.where(jnp.eye(n, dtype=bool), -jnp.inf,
                     (g[None, :] - stats.cost) / stats.epsilon)
  top = jnp.max(logits, axis=1, keepdims=True)
  top = jnp.where(jnp.isfinite(top), top, 0.0)  # a class of one image has no other column
  weights = jnp.exp(logits - top)  # [n, n]: zero on padding columns (g = -inf)
  shifts = jnp.where(stats.mask[None, :], shifts, 0.0)
  peak = jnp.max(shifts, axis=1, keepdims=True)
  scale = jnp.exp(jnp.maximum(shifts - peak, -_SHIFT_RANGE))  # [V, n]
  total = weights @ scale.T  # [n, V]
  cost = (weights * stats.cost) @ scale.T / total
  return (top + peak.T + jnp.log(total)).T, cost.T


def _image_sums(stats: obj.ClassStats) -> obj.SideSums:
  """SideSums of every image alone: leading axis n."""
  x = stats.features
  return obj.SideSums(count=jnp.ones_like(stats.ce), feat=x, feat_sq=x * x, ce=stats.ce,
                      entropy=stats.entropy, probs=stats.probs)


def _membership(idx: jax.Array, row_mask: jax.Array, n: int) -> jax.Array:
  """[n] bool: image is an active row of the subset."""
  return jnp.zeros((n,), jnp.int32).at[idx].add(row_mask.astype(jnp.int32)) > 0


def _solve_shortlist(stats, state, params, estimates, pairs_idx, pairs_mask, pair_init,
                     keys, offsets=None):
  """Exact scores of the `shortlist` lowest estimates.

  estimates [P]: screening scores (inf where invalid); pairs_idx(p) / pair_init(p) give the
  subset and warm start of entry p; keys [P] order ties; offsets [P] (optional) are added
  to the exact J to form the score (see `_greedy_offsets`). The state's count adds the
  valid shortlisted solves that stopped at the cap.

  Returns (best score [], its state, covered [] bool). covered: no entry left off the short
  list can beat the current J by the improvement bar, judged by the screen's errors on
  the short list. The estimate of an entry p is off from its exact J by err_p; over the
  short list err lies in [lo, hi]. An entry left off has estimate >= the short list's
  largest, so its J is at least that + lo - _SCREEN_SAFETY (hi - lo) - _SCREEN_FLOOR |J|,
  unless its error falls that far below every error seen. A list of fewer than
  _SCREEN_SAMPLE valid entries vouches for nothing; one that holds every valid entry
  covers them all.
  """
  k = min(params.shortlist, estimates.shape[0])
  _, top = jax.lax.top_k(-estimates, k)
  evs = jax.vmap(lambda p: obj.evaluate(stats, pairs_idx(p), pairs_mask, params,
                                         pair_init(p)))(top)
  values = evs.objective if offsets is None else evs.objective + offsets[top]
  # A short list longer than the valid entries also solves invalid ones; they never count.
  valid = jnp.isfinite(estimates[top])
  values = jnp.where(valid, values, jnp.inf)
  j = _argmin_lowest(values, keys[top])
  p = top[j]
  idx = pairs_idx(p)
  in_set = _membership(idx, pairs_mask, state.in_set.shape[0])
  unconverged = state.unconverged + _capped(evs.converged, valid)
  errors = values - estimates[top]
  lo = jnp.min(jnp.where(valid, errors, jnp.inf))
  hi = jnp.max(jnp.where(valid, errors, -jnp.inf))
  current = state.ev.objective
  lowest_left_off = (jnp.max(jnp.where(valid, estimates[top], -jnp.inf)) + lo
                     - _SCREEN_SAFETY * (hi - lo) - _SCREEN_FLOOR * jnp.abs(current))
  all_listed = jnp.sum(jnp.isfinite(estimates)) == jnp.sum(valid)
  covered = all_listed | ((jnp.sum(valid) >= _SCREEN_SAMPLE) & (
      lowest_left_off >= current - improvement_tolerance(current, params)))
  return values[j], _State(idx, pairs_mask, in_set, _take(evs, j), unconverged), covered


def _greedy_offsets(stats, state: _State, k, own_ce, params) -> jax.Array:
  """[n] what the greedy criterion adds to J(S + c) when slot k takes image c.

  own_ce = 0: nothing (the spec's greedy, exhaustive mode's). own_ce = 1: the release's
  greedy, which scores a candidate by its own CE instead of the subset mean (fast mode's).
  """
  mean_ce = (jnp.dot(state.row_mask, stats.ce[state.idx]) + stats.ce) / (k + 1.0)
  return own_ce * params.w_ce * (stats.ce - mean_ce)


def _fast_add(stats, state: _State, k, own_ce, params) -> _State:
  """Greedy step filling slot k (k rows active) by screening and a short exact list."""
  eps = stats.epsilon
  lse, unit_cost = jax.tree.map(lambda x: x[0], _soft_rows(
      stats, state.ev.ot.g, jnp.zeros((1,) + state.ev.ot.g.shape)))
  shrink = k / (k + 1.0)
  sums = obj.side_sums(stats, state.idx, state.row_mask)
  offsets = _greedy_offsets(stats, state, k, own_ce, params)
  estimates = (params.w_pot * (shrink * state.ev.pot + unit_cost / (k + 1.0)) + offsets
               + obj.side_terms(stats, jax.tree.map(jnp.add, sums, _image_sums(stats)), params))
  estimates = jnp.where(stats.candidate & ~state.in_set, estimates, jnp.inf)
  row_mask = state.row_mask.at[k].set(True)
  f = state.ev.ot.f
  # Active rows shrink to mass 1/(k+1): shift their potentials by eps * log(k/(k+1)).
  f_rows = f.at[:-1].add(eps * jnp.log(shrink))

  def init(c):
    f_c = f_rows.at[k].set(eps * (-jnp.log(k + 1.0) - lse[c]))
    return f_c, state.ev.ot.g

  n = stats.mask.shape[0]
  _, new, _ = _solve_shortlist(stats, state, params, estimates,
                               lambda c: state.idx.at[k].set(c), row_mask, init,
                               jnp.arange(n), offsets)
  return new


def _exhaustive_add(stats, state: _State, k, own_ce, params) -> _State:
  """Greedy step filling slot k: every candidate scored with a cold exact solve."""
  row_mask = state.row_mask.at[k].set(True)
  valid = stats.candidate & ~state.in_set
  scores, converged = _score_all(
      lambda c: _scored(stats, state.idx.at[k].set(c), row_mask, params),
      jnp.arange(stats.mask.shape[0]))
  scores += _greedy_offsets(stats, state, k, own_ce, params)
  c = jnp.argmin(jnp.where(valid, scores, jnp.inf))
  return _state(stats, state.idx.at[k].set(c.astype(jnp.int32)), row_mask, params,
                state.unconverged + _capped(converged, valid))


def _swapped(idx: jax.Array, n: int, p) -> jax.Array:
  """idx [m] with slot p // n replaced by image p % n (swaps are flattened (slot, image))."""
  return idx.at[p // n].set(p % n)


def _column_update_without(stats, state: _State, i, params) -> jax.Array:
  """Column potentials g [n] re-balanced after dropping slot i (one Sinkhorn column step)."""
  eps = stats.epsilon
  f = state.ev.ot.f.at[i].set(-jnp.inf)
  cost = jnp.concatenate(
      [stats.cost[state.idx], jnp.full((1, stats.cost.shape[1]), stats.delta)], axis=0)
  log_b = jnp.log(stats.mask / jnp.sum(stats.mask) * params.kappa)
  return eps * log_b - eps * jax.nn.logsumexp((f[:, None] - cost) / eps, axis=0)


def _swap_screen(stats, state: _State, params):
  """Screening estimates [m * n] of every swap (inf where invalid) and warm starts init(p)."""
  m = state.idx.shape[0]
  n = stats.mask.shape[0]
  eps = stats.epsilon
  sums = obj.side_sums(stats, state.idx, state.row_mask)
  row_cost = jnp.sum(state.ev.ot.plan * stats.cost[state.idx], axis=1)
  valid = stats.candidate & ~state.in_set
  images = _image_sums(stats)
  g = jax.vmap(lambda i: _column_update_without(stats, state, i, params))(jnp.arange(m))
  lse, unit_cost = _soft_rows(stats, state.ev.ot.g, (g - state.ev.ot.g) / eps)

  leaving = jax.tree.map(lambda s, each: s - each[state.idx], sums, images)  # [m, ...]

  def side(c):  # [m]: candidate c in every slot; blocks of candidates stay in cache.
    swapped = jax.tree.map(lambda rest, each: rest + each[c], leaving, images)
    return obj.side_terms(stats, swapped, params)

  estimates = (params.w_pot * (state.ev.pot - row_cost[:, None] + unit_cost / m)
               + jax.lax.map(side, jnp.arange(n), batch_size=_SCREEN_BLOCK).T)
  estimates = jnp.where(valid[None, :], estimates, jnp.inf)

  def init(p):
    i, c = p // n, p % n
    return state.ev.ot.f.at[i].set(eps * (-jnp.log(float(m)) - lse[i, c])), g[i]

  return estimates.ravel(), init


def _fast_round(stats, state: _State, params):
  """Best swap among a short list of screened swaps: (its exact J, its state, whether the
  list covers every swap that might improve; see `_solve_shortlist`)."""
  n = stats.mask.shape[0]
  estimates, init = _swap_screen(stats, state, params)
  return _solve_shortlist(stats, state, params, estimates,
                          lambda p: _swapped(state.idx, n, p), state.row_mask, init,
                          jnp.arange(estimates.shape[0]))


def _every_swap(stats, state: _State, params, init=None):
  """Best swap over every (slot i, candidate c), each solved exactly: (its J, its state,
  True: every swap was solved).

  Solves start cold (exhaustive mode's round), or warm from init(p) (p = i * n + c); either
  way each runs to the solver's threshold, so the J of a swap does not depend on the start
  beyond its accuracy.
  """
  m = state.idx.shape[0]
  n = stats.mask.shape[0]
  valid = jnp.tile(stats.candidate & ~state.in_set, m)
  start = (lambda p: None) if init is None else init

  scores, converged = _score_all(
      lambda p: _scored(stats, _swapped(state.idx, n, p), state.row_mask, params, start(p)),
      jnp.arange(m * n))
  scores = jnp.where(valid, scores, jnp.inf)
  p = jnp.argmin(scores)
  return scores[p], _state(stats, _swapped(state.idx, n, p), state.row_mask, params,
                           state.unconverged + _capped(converged, valid), start(p)), True


def _confirming_round(stats, state: _State, params):
  """Every swap solved exactly, warm-started as the screened round's short list is."""
  return _every_swap(stats, state, params, _swap_screen(stats, state, params)[1])


def improvement_tolerance(objective: jax.Array, params: obj.GadcParams) -> jax.Array:
  """[] how much a swap must lower J (objective []) to count as an improvement.

  J is known only to the accuracy of its solve. A solve stops once the column marginal of
  its plan is within sinkhorn_threshold (L1) of its total mass kappa ~ 1, so the plan may
  move about that fraction of its mass, and POT, its cost, moves by about that fraction of
  itself; the other terms of J are exact and non-negative, so relative to |J| the error is
  at most that. Two solves of one subset (one warm-, one cold-started) differ by as much.
  Below float32 resolution, a few ulps of |J| from summing its terms, nothing is
  measurable at all. A smaller decrease is noise: taking it could trade one subset for an
  equal one and back until the rounds run out.
  """
  resolution = _ULPS * jnp.finfo(jnp.float32).eps
  return jnp.abs(objective) * jnp.maximum(params.sinkhorn_threshold, resolution)


def _swap_rounds(stats, search, params, carry):
  """Applies search's best swap while it lowers J by more than `improvement_tolerance`
  and fewer than `rounds` rounds ran: the spec's refinement, with `search` a round.

  carry: (rounds run [], state, whether to go on [], covered []: whether the last round
  vouched for every swap, see `_solve_shortlist`). The count of solves that stopped at the
  cap includes every round's, swap taken or not.
  """
  def cond(carry):
    rounds, _, improved, _ = carry
    return improved & (rounds < params.rounds)

  def body(carry):
    rounds, current, _, _ = carry
    value, candidate, covered = search(stats, current, params)
    improved = value < (current.ev.objective
                        - improvement_tolerance(current.ev.objective, params))
    current = jax.tree.map(lambda a, b: jnp.where(improved, a, b), candidate, current)
    # The round's solves ran whether or not its swap is taken.
    return (rounds + 1, current._replace(unconverged=candidate.unconverged), improved,
            jnp.asarray(covered))

  return jax.lax.while_loop(cond, body, carry)


def _search(stats: obj.ClassStats, m: int, params: obj.GadcParams):
  """The mode's greedy, then its rounds (fast mode: screened) until none improves.

  Returns (rounds run [], state, covered []: whether the last round vouched for every swap;
  always True in exhaustive mode, whose rounds solve every swap).
  """
  fast = params.mode == 'fast'
  add = _fast_add if fast else _exhaustive_add
  own_ce = 1.0 if fast else 0.0
  state = _first_pick(stats, m, params)
  state, _ = jax.lax.scan(lambda s, k: (add(stats, s, k, own_ce, params), None), state,
                          jnp.arange(1, m))
  search = _fast_round if fast else _every_swap  # exhaustive: the spec's cold round
  rounds, state, _, covered = _swap_rounds(
      stats, search, params, (jnp.int32(0), state, jnp.asarray(True), jnp.asarray(True)))
  return rounds, state, covered


def select_one(problem: ClassProblem, m: int, params: obj.GadcParams):
  """GADC selection for one unbatched padded class.

  The class needs at least m candidates (`problem.with_min_candidates` ensures it).
  Exhaustive mode runs the spec's greedy and its swap rounds. Fast mode runs the release's
  greedy (own CE, see `_greedy_offsets`) with screened steps, then screened rounds until a
  short list has no improving swap. The screen can miss a swap: when the last screened
  round cannot vouch for the swaps off its short list (`_solve_shortlist`), fast mode runs
  rounds that solve every swap (warm-started) until none improves, so the result is a
  1-swap local optimum either way. Rounds of both kinds count towards `rounds`.

  Returns:
    indices [m] int32 (sorted), J [] float32 of them from a cold solve (as every method is
    scored), and unconverged [] int32: the exact solves of the whole search (first pick,
    greedy, rounds, the final scoring) that stopped at the cap.
  """
  stats = obj.class_stats(problem, params)
  rounds, state, covered = _search(stats, m, params)
  if params.mode == 'fast':
    _, state, _, _ = _swap_rounds(stats, _confirming_round, params,
                                  (rounds, state, ~covered, jnp.asarray(True)))
  idx = jnp.sort(state.idx)
  final = obj.evaluate(stats, idx, jnp.ones((m,), bool), params)
  return idx, final.objective, state.unconverged + _capped(final.converged, True)


@functools.lru_cache(maxsize=None)
def _batched(m: int, params: obj.GadcParams, mesh: Optional[Mesh]):
  """The jitted batch function for (m, params, mesh); jit itself caches per input shape."""
  fn = jax.vmap(lambda problem: select_one(problem, m, params))
  if mesh is not None:
    spec = PartitionSpec('classes')
    # Classes are independent: no collectives, so the varying-axis checks are moot.
    fn = jax.shard_map(fn, mesh=mesh, in_specs=spec, out_specs=(spec, spec, spec),
                       check_vma=False)
  return jax.jit(fn)


def select(problems: ClassProblem, m: int, cfg, keys: jax.Array,
           mesh: Optional[Mesh] = None) -> SelectionOutput:
  """GADC selection for a padded batch of classes.

  Args:
    problems: ClassProblem with a leading batch axis B (see `problem.stack_problems`).
    m: images to select per class (static).
    cfg: ConfigDict or attribute object with the GADC fields (`gadc_jax.defaults.gadc()`).
    keys: [B] PRNG keys, the interface every method shares; GADC is deterministic and does
      not use them.
    mesh: optional Mesh with a "classes" axis; the batch is split over it (padded with
      copies of the last class to a multiple of its size, which are dropped afterwards).
  Returns:
    SelectionOutput(indices [B, m] int32, objective [B] float32, unconverged [B] int32:
    the exact partial OT solves per class that stopped at sinkhorn_max_iterations).
  """
  del keys  # deterministic: ties break to the lowest index.
  params = obj.GadcParams.from_config(cfg)
  batch = problems.mask.shape[0]
  size = batch if mesh is None else batching.round_up(batch, mesh.shape['classes'])
  return SelectionOutput(*batching.padded_call(
      lambda padded: _batched(m, params, mesh)(jax.tree.map(jnp.asarray, padded)),
      problems, size))
