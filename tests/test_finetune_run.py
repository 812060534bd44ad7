"""Real offline-to-online runs: Launchpad processes, a Reverb server, MuJoCo.

Each test launches the real command in a subprocess with tiny step counts
and checks what the run wrote to its workdir.
"""

import csv
import glob
import json
import os
import subprocess
import sys
import time

import psutil
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFLINE_STEPS = 300
ONLINE_STEPS = 600
NUM_ACTORS = 2
TEMPERATURE = 2.0  # Not the preset's 3: the flag must reach the config.
ONLINE_ACTOR_LR = 1e-4  # Not the offline 3e-4: the learner must switch.
FINAL_EVAL_EPISODES = 3  # The offline-end and final evaluations'.
RATIO_TOLERANCE = 0.10
RUN_TIMEOUT_S = 420


def node_processes(workdir):
  """Launchpad node processes still alive for this run's workdir."""
  alive = []
  for proc in psutil.process_iter(['cmdline', 'environ']):
    try:
      cmdline = ' '.join(proc.info['cmdline'] or [])
      if 'process_entry' in cmdline and workdir in str(proc.environ()):
        alive.append(proc.pid)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
      pass
  return alive


def run_command(args, workdir, launch_type):
  env = dict(os.environ, IQL_TEST_WORKDIR=workdir)
  result = subprocess.run(
      [sys.executable, *args, f'--workdir={workdir}',
       f'--lp_launch_type={launch_type}'],
      cwd=REPO, env=env, capture_output=True, text=True,
      timeout=RUN_TIMEOUT_S, check=False)
  return result


def read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def finetune_args(dataset, online_steps):
  return ['launch/run_finetune.py', '--env=pen-binary-v0',
          f'--dataset={dataset}', f'--offline_steps={OFFLINE_STEPS}',
          f'--online_steps={online_steps}', f'--num_actors={NUM_ACTORS}',
          '--eval_every=200', '--eval_episodes=1',
          f'--final_eval_episodes={FINAL_EVAL_EPISODES}', '--batch_size=64',
          f'--temperature={TEMPERATURE}',
          f'--online_actor_learning_rate={ONLINE_ACTOR_LR}',
          '--log_every=1']  # Rows in every phase, however short.


@pytest.fixture(scope='module')
def local_mp_run(pen_random_npz, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run'))
  result = run_command(finetune_args(pen_random_npz, ONLINE_STEPS), workdir,
                       'local_mp')
  return workdir, result


def test_local_mp_run_exits_cleanly(local_mp_run):
  workdir, result = local_mp_run
  assert result.returncode == 0, result.stderr[-3000:]
  time.sleep(1.0)
  assert node_processes(workdir) == []  # Every process exited.


def test_offline_phase_ran_before_any_actor_step(local_mp_run):
  workdir, _ = local_mp_run
  summaries = [json.load(open(p)) for p in
               glob.glob(os.path.join(workdir, 'logs', 'actor_*_summary.json'))]
  assert len(summaries) == NUM_ACTORS
  for summary in summaries:
    assert summary['learner_steps_at_first_action'] >= OFFLINE_STEPS
  learner_rows = read_csv(os.path.join(workdir, 'logs', 'learner.csv'))
  offline = [r for r in learner_rows if r['phase'] == 'offline']
  assert offline and all(float(r['actor_steps'] or 0) == 0 for r in offline)


def test_actors_inserted_and_online_phase_paced(local_mp_run):
  workdir, _ = local_mp_run
  summary = json.load(open(os.path.join(workdir, 'summary.json')))
  assert summary['actor_steps'] == ONLINE_STEPS
  # Every environment step reached Reverb.
  assert summary['replay_size'] == ONLINE_STEPS
  assert summary['online_updates'] > 0
  assert abs(summary['update_to_env_step_ratio'] - 1.0) <= RATIO_TOLERANCE
  learner_rows = read_csv(os.path.join(workdir, 'logs', 'learner.csv'))
  online = [r for r in learner_rows if r['phase'] == 'online']
  assert online
  # Online, the actor learns at --online_actor_learning_rate.
  for row in online:
    assert float(row['actor_lr']) == pytest.approx(ONLINE_ACTOR_LR, rel=1e-5)


def test_evaluator_rows_written(local_mp_run):
  workdir, _ = local_mp_run
  rows = read_csv(os.path.join(workdir, 'logs', 'evaluator.csv'))
  phases = [r['phase'] for r in rows]
  # Periodic rows depend on the evaluator keeping up with a fast learner on a
  # loaded machine; the offline-end snapshot and the final one are certain.
  assert phases.count('offline_end') == 1 and phases[-1] == 'final'
  steps = [int(r['learner_steps']) for r in rows]
  assert steps == sorted(steps)
  assert all(p in ('offline', 'offline_end', 'online', 'final') for p in phases)
  offline_end = rows[phases.index('offline_end')]
  assert int(offline_end['learner_steps']) == OFFLINE_STEPS
  for row in rows:
    judged = row['phase'] in ('offline_end', 'final')
    assert int(row['episodes']) == (FINAL_EVAL_EPISODES if judged else 1)
  for row in rows:
    assert 0.0 <= float(row['success_rate']) <= 1.0
    assert -100.0 <= float(row['mean_return']) <= 0.0
  assert os.listdir(os.path.join(workdir, 'tensorboard'))


def test_summary_gives_the_paired_finetuning_gain(local_mp_run):
  workdir, _ = local_mp_run
  summary = json.load(open(os.path.join(workdir, 'summary.json')))
  rows = read_csv(os.path.join(workdir, 'logs', 'evaluator.csv'))
  by_phase = {r['phase']: float(r['normalized_score']) for r in rows}
  gain = summary['finetuning_gain']
  assert gain['episodes'] == FINAL_EVAL_EPISODES
  # Same episodes on both sides: the paired mean is the difference of means.
  assert gain['mean'] == pytest.approx(by_phase['final'] -
                                       by_phase['offline_end'])
  offline_end = json.load(
      open(os.path.join(workdir, 'logs', 'offline_end_eval.json')))
  scores = offline_end['episode_scores']
  assert len(scores) == FINAL_EVAL_EPISODES
  assert sum(scores) / FINAL_EVAL_EPISODES == pytest.approx(
      by_phase['offline_end'])
  assert summary['offline_end_eval'] == offline_end['eval']
  assert summary['offline_end_eval']['normalized_score'] == pytest.approx(
      by_phase['offline_end'])
  # The config the run trained with: the preset and the flags' overrides.
  assert summary['config']['temperature'] == TEMPERATURE
  assert summary['config']['expectile'] == 0.8  # hand_finetune's.
  assert summary['config']['batch_size'] == 64
  assert summary['config']['online_actor_learning_rate'] == ONLINE_ACTOR_LR


def test_launcher_prints_the_result_line(local_mp_run):
  _, result = local_mp_run
  lines = result.stdout.splitlines()
  done = next(i for i, l in enumerate(lines) if l.startswith('done: '))
  assert lines[done + 1].startswith('success rate %: offline end ')
  assert 'fine-tuning gain' in lines[done + 1]


def test_resume_from_workdir_under_local_mt(local_mp_run, pen_random_npz):
  workdir, first = local_mp_run
  assert first.returncode == 0
  before = json.load(open(os.path.join(workdir, 'summary.json')))
  more = 200
  result = run_command(finetune_args(pen_random_npz, ONLINE_STEPS + more),
                       workdir, 'local_mt')
  assert result.returncode == 0, result.stderr[-3000:]
  after = json.load(open(os.path.join(workdir, 'summary.json')))
  assert 'resumed learner' in result.stdout + result.stderr
  assert after['actor_steps'] == ONLINE_STEPS + more
  # It continued from the checkpoint (no second offline phase) and the whole
  # run kept its pacing. Not per segment: the first segment's learner may end
  # up to the rate limiter's slack ahead, and the resumed one then owes it.
  assert after['learner_steps'] > before['learner_steps']
  total = ONLINE_STEPS + more
  assert (abs(after['learner_steps'] - OFFLINE_STEPS - total)
          <= RATIO_TOLERANCE * total)
  rows = read_csv(os.path.join(workdir, 'logs', 'evaluator.csv'))
  assert [r['phase'] for r in rows].count('offline_end') == 1
  assert [r['phase'] for r in rows].count('final') == 2
  # The resumed run's gain is still against the first launch's offline end.
  final = float(rows[-1]['normalized_score'])
  offline_end = next(float(r['normalized_score']) for r in rows
                     if r['phase'] == 'offline_end')
  assert after['finetuning_gain']['mean'] == pytest.approx(final - offline_end)


def test_acme_distributed_layout_runs_iql_builder(pen_random_npz, tmp_path):
  """IQLBuilder in Acme 0.4.0's own DistributedLayout (its StepsLimiter stops it).

  Acme 0.4.0's layout has no clean shutdown: StepsLimiter calls lp.stop()
  while learner and evaluator are mid-RPC to the stopping counter, so
  Launchpad kills them after its 10 s notice and the launcher exits by
  SIGKILL. We check the work done and that no process survives.
  """
  workdir = str(tmp_path)
  result = run_command(
      ['experiments/acme_layout.py', f'--dataset={pen_random_npz}',
       f'--offline_steps={OFFLINE_STEPS}', '--online_steps=300',
       '--batch_size=64'], workdir, 'local_mp')
  assert result.returncode in (0, -9, 137), result.stderr[-3000:]
  output = result.stdout + result.stderr  # local_mp prints node logs to stdout.
  assert 'StepsLimiter: Max steps of 300 was reached' in output
  rows = read_csv(os.path.join(workdir, 'logs', 'learner.csv'))
  phases = [r['phase'] for r in rows]
  assert 'offline' in phases and 'online' in phases
  online = [r for r in rows if r['phase'] == 'online']
  assert max(float(r['learner_steps']) for r in online) > OFFLINE_STEPS
  time.sleep(2.0)
  assert node_processes(workdir) == []


def test_result_line_without_success_rates_or_offline_end():
  from iql_acme import program as program_lib  # pylint: disable=g-import-not-at-top
  final = {'normalized_score': 12.34, 'normalized_score_se': 1.5,
           'episodes': 206, 'success_rate': None}
  assert program_lib.result_line({'final_eval': final}) == (
      'normalized score: final 12.3 +- 1.5 (206 episodes)')
  assert program_lib.result_line(
      {'final_eval': {**final, 'normalized_score': None}}) is None
  offline_end = {**final, 'normalized_score': 10.0}
  gain = {'mean': 2.34, 'se': 0.5, 'episodes': 206}
  assert program_lib.result_line(
      {'final_eval': final, 'offline_end_eval': offline_end,
       'finetuning_gain': gain}) == (
           'normalized score: offline end 10.0 +- 1.5 (206 episodes), final '
           '12.3 +- 1.5 (206 episodes); fine-tuning gain +2.3 +- 0.5 (paired '
           'over the same 206 start states)')
