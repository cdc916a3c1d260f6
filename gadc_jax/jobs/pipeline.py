"""The pipeline job: runs the jobs of `config.stages` in order, then prints a summary.

The difficulty stage is D2C's: it runs only when config.select.method reads difficulty
scores, and then as two jobs: the train job on the whole split with config.train =
config.difficulty.scorer (the scorer), then the difficulty job. Other methods skip it, so a
run of them pays nothing for it.

A stage stopped by SIGTERM stops the pipeline there (Preempted: exit 143); the same command
run again skips the finished stages and resumes the stopped one.
"""

import os

from absl import logging
import ml_collections

from gadc_jax import artifacts
from gadc_jax import difficulty
from gadc_jax import jobs
from gadc_jax import layout
from gadc_jax import preemption


def _stage_jobs(config: ml_collections.ConfigDict, stage: str):
  """The (job, config) runs of one stage."""
  if stage != 'difficulty':
    return [(stage, config)]
  if config.select.method not in difficulty.METHODS:
    logging.info('pipeline: skipping the difficulty stage (select.method %s reads no '
                 'difficulty scores)', config.select.method)
    return []
  difficulty.check_config(config)  # before the scorer's training, not after it.
  return [('train', difficulty.scorer_config(config)), ('difficulty', config)]


def run(config: ml_collections.ConfigDict, workdir: str) -> None:
  stages = [s for s in jobs.JOBS if s not in ('pipeline', 'study')]
  for stage in config.stages:
    if stage not in stages:
      raise ValueError(f'unknown stage {stage!r} in config.stages; known: {", ".join(stages)}')
  for stage in config.stages:
    for job, job_config in _stage_jobs(config, stage):
      jobs.run(job, job_config, workdir)
    preemption.raise_if_agreed(f'after the {stage} stage of the pipeline')
  print(summary(config, workdir))


def summary(config: ml_collections.ConfigDict, workdir: str) -> str:
  """A human summary of what the stages wrote, with paths to open."""
  lines = [f'== gadc_jax pipeline: {workdir}']
  for name in config.classifier.networks:
    path = os.path.join(layout.classifier_dir(workdir, name), 'classifier.json')
    if os.path.exists(path):
      rec = artifacts.read_json(path)
      lines.append(f'classifier {name:<11} {rec["arch"]:<11} test accuracy '
                   f'{rec["test_accuracy"]:.4f}  {os.path.dirname(path)}')
  for name in config.features.networks:
    for split in config.features.splits:
      path = os.path.join(layout.features_dir(workdir, name, split), 'manifest.json')
      if os.path.exists(path):
        man = artifacts.read_json(path)
        lines.append(f'features   {name}-{split}: {man["num_examples"]} images, '
                     f'{man["feature_dim"]}-d  {os.path.dirname(path)}')
  path = os.path.join(difficulty.store_dir(config, workdir), 'manifest.json')
  if os.path.exists(path):
    lines.append(f'difficulty {artifacts.read_json(path)["num_examples"]} images  '
                 f'{os.path.dirname(path)}')
  sel_root = os.path.join(workdir, 'selections')
  for name in sorted(os.listdir(sel_root)) if os.path.isdir(sel_root) else []:
    path = os.path.join(sel_root, name, 'selection.json')
    if not os.path.exists(path):
      continue
    sel = artifacts.read_json(path)
    lines.append(f'selection  {name}: {sel["num_selected"]} images, mean objective '
                 f'{sel["objective_mean"]:.4f}, {sel["seconds"]:.1f} s')
    for space, diag in sel['diagnostics'].items():
      lines.append(f'  [{space}] ' + ', '.join(f'{k} {v:.4g}' for k, v in diag.items()))
    lines.append(f'  grid: {os.path.join(sel_root, name, "grid.png")}')
  for kind, record_name in (('train', 'train.json'), ('samples', 'samples.json'),
                            ('distilled', 'distilled.json')):
    root = os.path.join(workdir, kind)
    for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
      if os.path.exists(os.path.join(root, name, record_name)):
        grids = sorted(f for f in os.listdir(os.path.join(root, name)) if f.startswith('grid'))
        lines.append(f'{kind:<10} {name}: grid {os.path.join(root, name, grids[-1])}')
  eval_root = os.path.join(workdir, 'eval')
  for name in sorted(os.listdir(eval_root)) if os.path.isdir(eval_root) else []:
    if name.endswith('.json'):
      rec = artifacts.read_json(os.path.join(eval_root, name))
      lines.append(f'evaluate   {name[:-5]}: ' + ', '.join(
          f'{k} {v:.4g}' for k, v in sorted(rec['metrics'].items())))
  return '\n'.join(lines)
