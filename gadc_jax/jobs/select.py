"""The select job: a per-class subset of a split, by any selection method, with diagnostics.

Reads the FeatureStore of `select.network` (and of every `select.eval_networks`, to judge the
selection in spaces it did not optimise; for d2c also the difficulty job's scores), splits
the budget over the classes, runs the method on batches of classes, and writes to
WORKDIR/selections/NAME/:

    classes/class-00007.json   one finished class (resume skips these)
    selection.npz              per-class offsets, within-class indices, split positions, ids
    selection.json             config, input fingerprints, m and objective per class,
                               diagnostics per class and averaged, per feature space,
                               median cost / epsilon per class, size and checksum of
                               selection.npz and grid.png; written last ("finished")
    grid.png                   the selected images, a row per class

On several hosts each takes a disjoint set of classes; host 0 merges. A finished selection
whose selection.npz or grid.png is damaged (truncated, swapped, removed) is rebuilt from
the class files: exactly the damaged file, nothing else rewritten.
"""

import os
import time
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np
import tqdm

from gadc_jax import artifacts
from gadc_jax import difficulty
from gadc_jax import feature_store
from gadc_jax import layout
from gadc_jax import preemption
from gadc_jax import report
from gadc_jax import validation
from gadc_jax.data import input_pipeline
from gadc_jax.selection import budget as budget_lib
from gadc_jax.selection import methods
from gadc_jax.selection import objective
from gadc_jax.selection import problem as problem_lib
from gadc_jax.transport import diagnostics as diagnostics_lib

# The files of a finished selection that selection.json describes (size, checksum).
_FILES = ('selection.npz', 'grid.png')


def _check_config(config: ml_collections.ConfigDict) -> None:
  """config.select, checked before any work: one ValueError naming the key."""
  cfg = config.select
  validation.require(cfg, 'config.select',
                     positive_ints=('classes_per_batch', 'grid_classes', 'grid_per_class'))
  budget_lib.check_options(cfg)
  methods.get_method(cfg.method)
  # Every selection, whatever its method, is scored with GADC's objective.
  for name in dict.fromkeys((cfg.method, 'gadc')):
    methods.check_options(name, cfg[name], f'config.select.{name}')
  diagnostics_lib.check_config(cfg.diagnostics)


def _check_classes(store: feature_store.FeatureStore) -> None:
  for c, n in enumerate(store.class_sizes()):
    if n == 0:
      raise ValueError(f'class {c} has no images in {store.path}')


def _class_problem(store, c: int, tau: float, scores=None) -> problem_lib.ClassProblem:
  """Class c of `store`, with its difficulty from the store `scores` (rows aligned) if any."""
  return problem_lib.make_problem(
      store.load('features', c), store.probs(c), store.load('ce', c),
      store.load('entropy', c), store.load('maxprob', c),
      None if scores is None else scores.load('difficulty', c), tau=tau,
      labels=store.load('labels', c))


def _space_inputs(store, c: int) -> dict[str, np.ndarray]:
  """What the diagnostics read of class c in an evaluation space: features [n, D] float32,
  and CE [n] when the network has a classifier head (a DINOv2 encoder has none)."""
  inputs = {'features': np.asarray(store.load('features', c), np.float32)}
  if store.has_head:
    inputs['ce'] = np.asarray(store.load('ce', c))
  return inputs


def _check_finite(stores, classes) -> None:
  """A ValueError naming the array, class and example id of the first NaN or Inf in what
  the method or the diagnostics read of `classes`, in every feature space, before any
  solve: a NaN CE made GADC return duplicate picks, NaN features a linprog traceback.
  A store without a classifier head holds features alone."""
  for store in stores:
    for c in classes:
      found = problem_lib.first_non_finite(
          _class_problem(store, c, 0.0) if store.has_head
          else {'features': store.load('features', c)})
      if found is not None:
        name, row = found
        raise ValueError(f'non-finite {name} in {store.path}: class {c}, row {row} '
                         f'(id {store.load("ids", c)[row]})')


def _open_stores(config, workdir: str):
  cfg = config.select
  store = feature_store.open_store(config, workdir, cfg.network, cfg.split)
  if not store.has_head:
    raise ValueError(f'config.select.network {cfg.network!r} has no classifier head, and '
                     'selection needs its probabilities: select with a classifier')
  info = input_pipeline.split_info(config.data, cfg.split)
  if store.manifest['inputs']['dataset'][:3] != [info.dataset, info.version, info.split]:
    raise ValueError(
        f'{store.path} holds features of {store.manifest["inputs"]["dataset"][:3]}, not of '
        f'config.data {[info.dataset, info.version, info.split]}')
  eval_stores = {}
  for name in cfg.eval_networks:
    other = feature_store.open_store(config, workdir, name, cfg.split)
    if not (np.array_equal(other.offsets, store.offsets)
            and np.array_equal(other.load('positions'), store.load('positions'))):
      raise ValueError(f'{other.path} and {store.path} do not hold the same images')
    eval_stores[name] = other
  scores = None
  if cfg.method in difficulty.METHODS:
    scores = difficulty.open_scores(config, workdir, store)
  return store, eval_stores, scores


def _class_path(out: str, c: int) -> str:
  return os.path.join(out, 'classes', f'class-{c:05d}.json')


def _score_class(config, store, eval_stores, c, prob, indices, unconverged: int,
                 cost_over_epsilon: float) -> dict[str, Any]:
  """Objective and diagnostics of one class's subset, in every feature space.

  `unconverged` counts the method's partial OT solves for this class that stopped at the
  iteration cap; the scoring solve adds one if it stops there too. `cost_over_epsilon` is
  recorded as it is (see `objective.cost_over_epsilon`).
  """
  cfg = config.select
  score = objective.objective_of(prob, np.asarray(indices), cfg.gadc)
  # J is defined in the selection space: its own POT term is reported there only.
  diag = {cfg.network: diagnostics_lib.diagnostics(prob.features, indices, prob.ce,
                                                   cfg.diagnostics, objective_cfg=cfg.gadc)}
  for name, other in eval_stores.items():
    inputs = _space_inputs(other, c)
    diag[name] = diagnostics_lib.diagnostics(inputs['features'], indices, inputs.get('ce'),
                                             cfg.diagnostics)
  return {
      'class': c,
      'indices': [int(i) for i in indices],
      'ids': [str(store.load('ids', c)[i]) for i in indices],
      'objective': score.objective,
      'unconverged_solves': int(unconverged) + (not score.converged),
      'cost_over_epsilon': cost_over_epsilon,
      'diagnostics': diag,
  }


def _select_classes(config, store, eval_stores, scores, out, classes, m) -> None:
  """Runs the method on `classes` (all with budget m), writing one file per class; `scores`
  is the difficulty store when the method reads one."""
  cfg = config.select
  # This host's devices share each batch of classes (hosts already take disjoint classes).
  devices = jax.local_devices()
  mesh = jax.sharding.Mesh(np.asarray(devices), ('classes',)) if len(devices) > 1 else None
  logging.info('select %s: m=%d, classes split over %d local devices', out, m, len(devices))
  seed_key = jax.random.PRNGKey(cfg.seed)
  bar = tqdm.tqdm(total=len(classes), desc=f'select {cfg.method} m={m}', unit='class')
  for i in range(0, len(classes), cfg.classes_per_batch):
    batch = classes[i:i + cfg.classes_per_batch]
    # The spec's candidate filter belongs to GADC (select.gadc.tau); baselines see every image.
    tau = cfg.gadc.tau if cfg.method == 'gadc' else 0.0
    probs = [problem_lib.with_min_candidates(_class_problem(store, c, tau, scores), m)
             for c in batch]
    # Before the solve: a cost scale far from the preset's changes the selection and its speed.
    ratios = {c: objective.cost_over_epsilon(p.features, cfg.gadc)
              for c, p in zip(batch, probs)}
    warning = objective.epsilon_scale_warning(ratios, cfg.gadc)
    if warning:
      logging.warning('select %s: %s', out, warning)
    keys = jax.vmap(lambda c: jax.random.fold_in(seed_key, c))(np.asarray(batch))
    result = methods.select(cfg.method, problem_lib.stack_problems(probs), m, cfg[cfg.method],
                            keys, mesh)
    for c, prob, idx, unconverged in zip(batch, probs, np.asarray(result.indices),
                                         np.asarray(result.unconverged)):
      artifacts.atomic_write_json(
          _class_path(out, c),
          _score_class(config, store, eval_stores, c, prob, idx, unconverged, ratios[c]))
    bar.update(len(batch))
    if preemption.requested():  # class batches are the unit of resumption.
      break
  bar.close()


def _write_selection(config, store, out: str, m: np.ndarray, records) -> None:
  """selection.npz of the class records, in class order."""
  del config  # the writers of _FILES share one signature.
  indices = np.concatenate([r['indices'] for r in records]).astype(np.int64)
  positions = np.concatenate(
      [np.asarray(store.load('positions', r['class']))[r['indices']] for r in records])
  artifacts.atomic_write_npz(
      os.path.join(out, 'selection.npz'), offsets=np.concatenate([[0], np.cumsum(m)]),
      indices=indices, positions=positions,
      ids=np.concatenate([r['ids'] for r in records]).astype(str),
      labels=np.repeat(np.arange(store.num_classes), m).astype(np.int32))


def _class_records(out: str, num_classes: int) -> list[dict]:
  return [artifacts.read_json(_class_path(out, c)) for c in range(num_classes)]


def _merge(config, store, out: str, m: np.ndarray, inputs, expected, seconds) -> dict:
  records = _class_records(out, store.num_classes)
  for name in _FILES:
    _WRITERS[name](config, store, out, m, records)
  spaces = list(records[0]['diagnostics'])
  unconverged = {r['class']: r['unconverged_solves'] for r in records
                 if r['unconverged_solves']}
  if unconverged:
    logging.warning(
        'selection %s: partial OT solves stopped at the iteration cap '
        '(select.gadc.sinkhorn_max_iterations) without converging in classes %s (solves per '
        'class: %s); their objective values are approximate: raise the cap or epsilon.',
        out, ', '.join(map(str, unconverged)), unconverged)
  summary = {
      'fingerprint': expected,
      'inputs': inputs,
      'config': config.select.to_dict(),
      'num_selected': int(m.sum()),
      'per_class': m.tolist(),
      'objective_mean': float(np.mean([r['objective'] for r in records])),
      'objective': [r['objective'] for r in records],
      'unconverged_solves': [r['unconverged_solves'] for r in records],
      'unconverged_classes': sorted(unconverged),
      'cost_over_epsilon': [r['cost_over_epsilon'] for r in records],
      'diagnostics': {s: diagnostics_lib.average([r['diagnostics'][s] for r in records])
                      for s in spaces},
      'class_diagnostics': [r['diagnostics'] for r in records],
      'seconds': seconds,
      'artifacts': artifacts.describe_files(out, _FILES),
  }
  artifacts.atomic_write_json(os.path.join(out, 'selection.json'), summary)
  return summary


def _write_grid(config, store, out: str, m: np.ndarray, records) -> None:
  """grid.png: the first selected images of the first classes, a row per class."""
  del m  # the writers of _FILES share one signature.
  cfg = config.select
  shown = [np.asarray(store.load('positions', r['class']))[r['indices'][:cfg.grid_per_class]]
           for r in records[:cfg.grid_classes]]
  images = input_pipeline.read_examples(config.data, cfg.split, np.concatenate(shown))['image']
  rows = np.split(images, np.cumsum([len(s) for s in shown])[:-1])
  report.save_image_grid(rows, os.path.join(out, 'grid.png'))


_WRITERS = {'selection.npz': _write_selection, 'grid.png': _write_grid}


def _whole(config, store, out: str, m: np.ndarray, summary: dict) -> dict:
  """A finished selection, checked against the sizes and checksums its selection.json
  records; a damaged file (truncated, swapped, removed) is rebuilt from the class files,
  and only that file."""
  described = summary.get('artifacts')
  if described is None:
    raise ValueError(f'{out}/selection.json records no checksums of its files (an older '
                     'version wrote it); remove the folder and run the select job again')
  damaged = artifacts.damaged_on_rerun(out, described, 'selection')
  if not damaged:
    return summary
  if jax.process_index() == 0:
    records = _class_records(out, store.num_classes)
    for name in damaged:
      _WRITERS[name](config, store, out, m, records)
  multihost_utils.sync_global_devices(f'select {out} rebuilt')
  artifacts.verify_files(out, described, f'selection {out}, rebuilt from its class files '
                         '(which changed since it was merged)')
  return summary


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  _check_config(config)
  cfg = config.select
  store, eval_stores, scores = _open_stores(config, workdir)
  _check_classes(store)
  m = budget_lib.per_class_budget(cfg.budget, store.class_sizes(), cfg.allocation,
                                  cfg.small_classes)
  inputs = {
      'dataset': store.manifest['inputs']['dataset'][:3],
      'features': store.fingerprint,
      'eval_features': {k: s.fingerprint for k, s in eval_stores.items()},
      'method': cfg.method,
      'method_config': cfg[cfg.method].to_dict(),
      'objective_config': cfg.gadc.to_dict(),
      'diagnostics': cfg.diagnostics.to_dict(),
      'per_class': m.tolist(),
      'seed': cfg.seed,
  }
  if scores is not None:
    inputs['difficulty'] = scores.fingerprint
  expected = artifacts.fingerprint(inputs)
  out = layout.selection_dir(workdir, layout.selection_name(cfg))
  final = os.path.join(out, 'selection.json')
  mine = [c for c in range(store.num_classes) if c % jax.process_count() == jax.process_index()]
  todo = [c for c in mine if not os.path.exists(_class_path(out, c))]
  # Before the handshake records a start: bad inputs must leave no trace in the folder.
  _check_finite([store, *eval_stores.values()], todo)
  summary = artifacts.finished_or_start(final, os.path.join(out, 'classes', 'inputs.json'),
                                        expected, inputs, 'selection')
  if summary is not None:
    return _whole(config, store, out, m, summary)
  multihost_utils.sync_global_devices(f'select {out} start')

  t0 = time.time()
  logging.info('select %s: %d classes, %d left on this host, %d images in all', out,
               store.num_classes, len(todo), int(m.sum()))
  for size in sorted(set(m[todo].tolist())):
    if not preemption.requested():
      _select_classes(config, store, eval_stores, scores, out,
                      [c for c in todo if m[c] == size], size)
  preemption.raise_if_agreed(f'in the select job, {out}')
  multihost_utils.sync_global_devices(f'select {out} classes')
  summary = None
  if jax.process_index() == 0:
    summary = _merge(config, store, out, m, inputs, expected, time.time() - t0)
    logging.info('selection written to %s (mean objective %.4f)', out,
                 summary['objective_mean'])
  multihost_utils.sync_global_devices(f'select {out} merged')
  return summary if summary is not None else artifacts.read_json(final)
