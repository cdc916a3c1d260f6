"""gadc_jax.host: with its settings, repeated XLA CPU executions reuse their temporaries."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

# Runs a jitted function whose temporaries are one 128 MB block ten times and counts the minor
# page faults of the last eight runs: a block that is mapped afresh faults on every page. A
# block may be freed just after the next run allocates (the release is asynchronous), so a
# reused heap can still take a fresh block now and then, never on every run.
_SCRIPT = """
import resource, sys
from gadc_jax import host
if sys.argv[1] == 'configured':
  host.configure_cpu_runtime()
import jax, jax.numpy as jnp
from gadc_jax.training import train_state
f = jax.jit(lambda x: jnp.sum(jnp.tanh(x @ x) @ x),
            compiler_options=train_state.compiler_options())
x = jnp.ones((4096, 4096), jnp.float32) / 4096
for run in range(10):
  if run == 2:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  jax.block_until_ready(f(x))
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
_BLOCK_PAGES = 2 * 4096 * 4096 * 4 // 4096


def _faults_of_eight_runs(mode: str) -> int:
  env = {k: v for k, v in os.environ.items() if not k.startswith(('XLA_', 'MALLOC_'))}
  result = subprocess.run([sys.executable, '-c', _SCRIPT, mode], capture_output=True,
                          text=True, check=True, env=dict(env, JAX_PLATFORMS='cpu'), cwd=REPO)
  return int(result.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc allocator settings')
def test_configured_runtime_reuses_the_temporaries():
  # The control shows the cost the settings remove, so this test can fail.
  assert _faults_of_eight_runs('default') > 6 * _BLOCK_PAGES
  assert _faults_of_eight_runs('configured') < 3 * _BLOCK_PAGES
