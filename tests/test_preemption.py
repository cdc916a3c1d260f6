"""gadc_jax.preemption: SIGTERM as a stop flag, agreed on by every host, and main.py's exit.

Unit tests of the flag in this process; two real jax processes (CPU, gloo collectives) that
agree through stop_agreed(); the launch scripts passing on a preempted job's status; and
main.py stopping the digits smoke pipeline on SIGTERM with status 143, then resuming it.
"""

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from gadc_jax import preemption
from tests.conftest import REPO


def _clean_env(**extra) -> dict:
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  env.update(extra)
  return env


def _wait_for(condition, timeout_s: float = 5.0) -> bool:
  """Python runs signal handlers between bytecodes; give the handler a moment."""
  deadline = time.monotonic() + timeout_s
  while not condition():
    if time.monotonic() > deadline:
      return False
    time.sleep(0.01)
  return True


# ---------------------------------------------------------------------------------------------
# a. The flag in one process.


@pytest.fixture
def outer_handler():
  """A SIGTERM handler that records signals, in place of the default one during a test: a
  block that failed to catch SIGTERM then fails the test instead of killing pytest."""
  received = []
  handler = lambda *_: received.append(1)
  original = signal.signal(signal.SIGTERM, handler)
  yield handler, received
  signal.signal(signal.SIGTERM, original)


def test_sigterm_inside_the_block_sets_the_flag_instead_of_killing(outer_handler):
  handler, received = outer_handler
  with preemption.sigterm_requests_stop():
    assert signal.getsignal(signal.SIGTERM) is not handler
    assert not preemption.requested()
    os.kill(os.getpid(), signal.SIGTERM)
    assert _wait_for(preemption.requested)
  assert not received  # the block's handler took it; the process lives on.
  assert signal.getsignal(signal.SIGTERM) is handler  # the previous handler is back.
  os.kill(os.getpid(), signal.SIGTERM)
  assert _wait_for(lambda: received)


def test_entering_the_block_clears_an_old_request(outer_handler):
  with preemption.sigterm_requests_stop():
    os.kill(os.getpid(), signal.SIGTERM)
    assert _wait_for(preemption.requested)
  with preemption.sigterm_requests_stop():
    assert not preemption.requested()
  assert not outer_handler[1]


def test_the_previous_handler_is_back_after_an_exception(outer_handler):
  handler, received = outer_handler
  with pytest.raises(RuntimeError):
    with preemption.sigterm_requests_stop():
      raise RuntimeError('job failed')
  assert signal.getsignal(signal.SIGTERM) is handler
  os.kill(os.getpid(), signal.SIGTERM)
  assert _wait_for(lambda: received)


def test_raise_if_agreed_raises_only_after_sigterm(outer_handler):
  with preemption.sigterm_requests_stop():
    preemption.raise_if_agreed('at step 3 of a test')  # no SIGTERM: returns.
    assert not preemption.stop_agreed()
    os.kill(os.getpid(), signal.SIGTERM)
    assert _wait_for(preemption.requested)
    assert preemption.stop_agreed()
    with pytest.raises(preemption.Preempted,
                       match='stopped by SIGTERM at step 3 of a test; run the same command'):
      preemption.raise_if_agreed('at step 3 of a test')


def test_outside_the_main_thread_the_block_changes_nothing():
  before, errors = signal.getsignal(signal.SIGTERM), []

  def body():
    try:
      with preemption.sigterm_requests_stop():
        errors.append(signal.getsignal(signal.SIGTERM) is not before)
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  thread = threading.Thread(target=body)
  thread.start()
  thread.join()
  assert errors == [False]
  assert preemption.EXIT_STATUS == 143


# ---------------------------------------------------------------------------------------------
# b. Two processes agree (jax.distributed on localhost, CPU collectives).

_HOST = textwrap.dedent('''
    import json, os, signal, sys
    sys.path.insert(0, {repo!r})
    import jax
    process_id, sigterm_on = int(sys.argv[1]), sys.argv[2]
    jax.distributed.initialize(coordinator_address={address!r}, num_processes=2,
                               process_id=process_id, initialization_timeout=60)
    from gadc_jax import preemption
    with preemption.sigterm_requests_stop():
      if sigterm_on == str(process_id):
        os.kill(os.getpid(), signal.SIGTERM)
        while not preemption.requested():
          pass
      requested = preemption.requested()
      agreed = preemption.stop_agreed()
      try:
        preemption.raise_if_agreed('at the test point')
        raised = False
      except preemption.Preempted:
        raised = True
    print(json.dumps({{'process': jax.process_index(), 'count': jax.process_count(),
                      'requested': requested, 'agreed': agreed,
                      'raised': raised}}), flush=True)
''')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _two_hosts(sigterm_on: str, timeout_s: float = 180) -> list[dict]:
  """Runs _HOST as processes 0 and 1; SIGTERM goes to process `sigterm_on` ('-': none)."""
  script = _HOST.format(repo=REPO, address=f'127.0.0.1:{_free_port()}')
  env = _clean_env(JAX_PLATFORMS='cpu')
  procs = [subprocess.Popen([sys.executable, '-c', script, str(i), sigterm_on], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  try:
    outs = [p.communicate(timeout=timeout_s) for p in procs]
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    errs = [p.communicate()[1][-1500:] for p in procs]
    pytest.fail(f'the two processes did not finish in {timeout_s} s (a hang): {errs}')
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  return [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]


def test_two_processes_agree_to_stop_when_one_gets_sigterm():
  records = _two_hosts(sigterm_on='1')
  assert [r['process'] for r in records] == [0, 1]
  assert all(r['count'] == 2 for r in records)
  assert [r['requested'] for r in records] == [False, True]  # only process 1 got it...
  assert [r['agreed'] for r in records] == [True, True]  # ...and both stop.
  assert [r['raised'] for r in records] == [True, True]


def test_two_processes_agree_to_go_on_without_sigterm():
  records = _two_hosts(sigterm_on='-')
  assert [r['count'] for r in records] == [2, 2]
  assert [r['agreed'] for r in records] == [False, False]
  assert [r['raised'] for r in records] == [False, False]


# ---------------------------------------------------------------------------------------------
# The launch scripts pass a preempted job's status (143) on, and its arguments unchanged.

# Stands in for python on PATH: records its arguments, exits as main.py does on SIGTERM.
_FAKE_PYTHON = '''#!/usr/bin/env bash
printf '%s\\n' "$@" > "$ARGS_FILE"
exit 143
'''
# srun runs its command (here on one node).
_FAKE_SRUN = '''#!/usr/bin/env bash
"$@"
'''
# gcloud ... ssh --command=CMD runs CMD through a login shell of the worker (here: bash -c).
_FAKE_GCLOUD = '''#!/usr/bin/env bash
for a in "$@"; do
  case "$a" in --command=*) cmd=${a#--command=} ;; esac
done
bash -c "$cmd"
'''
_ARGS = ['--config.data.manual_dir=/data/image net', "--config.stages=('train','sample')",
         '--config.evaluate.reference=$HOME/ref.npz']


@pytest.mark.skipif(shutil.which('bash') is None, reason='needs bash')
@pytest.mark.parametrize('script,leading', [
    ('local.sh', []),
    ('gpu_slurm.sh', ['--multihost']),
    ('tpu_pod.sh', ['--multihost']),
])
def test_launch_script_passes_on_the_stopped_status(tmp_path, script, leading):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  for name, text in (('python', _FAKE_PYTHON), ('srun', _FAKE_SRUN), ('gcloud', _FAKE_GCLOUD)):
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  home = tmp_path / 'home'
  home.mkdir()
  (home / 'gadc_jax').symlink_to(REPO)  # tpu_pod.sh runs in ~/gadc_jax on each worker.
  config, workdir = 'configs/imagenet.py:model=dit,budget=10/class', 'gs://bucket/run one'
  pod = ['my-tpu', 'us-central2-b'] if script == 'tpu_pod.sh' else []
  env = _clean_env(PATH=f'{bin_dir}:{os.environ["PATH"]}', HOME=str(home),
                   ARGS_FILE=str(tmp_path / 'args'))
  result = subprocess.run(['bash', f'launch/{script}', *pod, config, workdir, *_ARGS],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
  assert result.returncode == 143, result.stderr
  args = (tmp_path / 'args').read_text().splitlines()
  assert args == ['main.py', *leading, f'--config={config}', f'--workdir={workdir}', *_ARGS]


# ---------------------------------------------------------------------------------------------
# c. End to end: main.py stops the digits smoke pipeline on SIGTERM, then resumes it.


# SIGTERM comes before the first train step is compiled, so the job stops at step 1; a few
# more steps keep the resumed run short.
_TRAIN_STEPS = 50


def _main_command(workdir: str, data_dir: str) -> list[str]:
  return [sys.executable, 'main.py', '--config=configs/digits.py:smoke=True',
          f'--workdir={workdir}', f'--config.train.steps={_TRAIN_STEPS}',
          '--config.train.checkpoint_every=1000', f'--config.data.data_dir={data_dir}']


def sigterm_once(command: list[str], marker: str, timeout_s: float = 600):
  """Runs `command` (main.py), sends it SIGTERM once a line of its stderr contains `marker`;
  (exit status, stdout, stderr, whether it was signalled)."""
  proc = subprocess.Popen(command, cwd=REPO, env=_clean_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  lines, signalled = [], threading.Event()

  def read_stderr():
    for line in proc.stderr:
      lines.append(line)
      if marker in line and not signalled.is_set():
        proc.send_signal(signal.SIGTERM)
        signalled.set()

  reader = threading.Thread(target=read_stderr, daemon=True)
  reader.start()
  try:
    stdout = proc.stdout.read()
    proc.wait(timeout=timeout_s)
  except subprocess.TimeoutExpired:
    proc.kill()
    pytest.fail(f'main.py did not finish in {timeout_s} s: {"".join(lines)[-3000:]}')
  reader.join(timeout=30)
  return proc.returncode, stdout, ''.join(lines), signalled.is_set()


@pytest.mark.slow
def test_main_stops_on_sigterm_with_143_and_the_same_command_resumes(tmp_path):
  workdir, data_dir = str(tmp_path / 'work'), str(tmp_path / 'tfds')
  command = _main_command(workdir, data_dir)

  # Once the train job logs that it starts training.
  status, _, stderr, signalled = sigterm_once(command, 'training DiT-S/2 on')
  assert signalled, f'the train job never logged its start: {stderr[-3000:]}'
  assert status == preemption.EXIT_STATUS, stderr[-3000:]
  assert 'Traceback' not in stderr, stderr[-3000:]
  stopped = [line for line in stderr.splitlines() if line.startswith('stopped:')]
  assert len(stopped) == 1, stderr[-3000:]
  match = re.search(r'stopped by SIGTERM at step (\d+) of the train job', stopped[0])
  assert match, stopped[0]
  step = int(match.group(1))
  [train_dir] = glob.glob(os.path.join(workdir, 'train', '*'))
  assert os.listdir(os.path.join(train_dir, 'checkpoints'))
  assert not os.path.exists(os.path.join(train_dir, 'train.json'))
  assert not glob.glob(os.path.join(workdir, 'eval', '*.json'))

  result = subprocess.run(command, cwd=REPO, env=_clean_env(), capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  # From the step it stopped at, not from scratch.
  assert f'resuming {train_dir} at step {step}' in result.stderr, result.stderr[-3000:]
  with open(os.path.join(train_dir, 'train.json')) as f:
    assert json.load(f)['step'] == _TRAIN_STEPS
  assert glob.glob(os.path.join(workdir, 'eval', '*.json'))
