"""experiments/train_offline.py end to end, and experiments/plot_run.py."""

import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from acme.utils import loggers

from iql_acme import envs
from iql_acme import learning
from iql_acme import networks as iql_networks
from iql_acme import training
from iql_acme.config import config_for_domain
from iql_acme.data import load_dataset
from iql_acme.evaluation import EVAL_CSV_FIELDS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'experiments'))
import plot_run  # pylint: disable=g-import-not-at-top,wrong-import-position
import train_offline  # pylint: disable=g-import-not-at-top,wrong-import-position

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
STEPS, EVAL_EVERY = 300, 150
LOSSES = ('critic_loss', 'value_loss', 'actor_loss')


def _rows(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def _assert_png(path):
  assert os.path.getsize(path) > 1000
  with open(path, 'rb') as f:
    assert f.read(len(PNG_MAGIC)) == PNG_MAGIC


def test_train_offline_writes_logs_evaluations_and_curve(
    pen_random_npz, tmp_path, capsys):
  out = str(tmp_path / 'run')
  train_offline.main([
      '--env', 'pen-binary-v0', '--dataset', pen_random_npz, '--out', out,
      '--steps', str(STEPS), '--eval_every', str(EVAL_EVERY),
      '--eval_episodes', '1', '--batch_size', '32', '--seed', '1',
      '--expectile', '0.6', '--actor_cosine_decay', 'false'])
  stdout = capsys.readouterr().out
  assert 'updates/s' in stdout and 'ETA' in stdout

  train = _rows(os.path.join(out, 'train.csv'))
  steps = [int(r['learner_steps']) for r in train]
  assert steps == sorted(steps) and steps[-1] == STEPS
  assert EVAL_EVERY in steps  # Chunks land on the evaluation step.
  for row in train:
    for key in LOSSES + ('updates_per_s',):
      assert math.isfinite(float(row[key]))
  assert all(r['phase'] == 'offline' for r in train)

  with open(os.path.join(out, 'eval.csv'), newline='') as f:
    reader = csv.DictReader(f)
    assert tuple(reader.fieldnames) == EVAL_CSV_FIELDS
    evals = list(reader)
  assert [int(r['learner_steps']) for r in evals] == [0, EVAL_EVERY, STEPS]
  for row in evals:
    assert int(row['episodes']) == 1 and row['phase'] == 'offline'
    # pen-binary: reward 0 or -1 per step, 100 steps; score = success %.
    assert -100.0 <= float(row['mean_return']) <= 0.0
    assert float(row['normalized_score']) in (0.0, 100.0)
    assert float(row['normalized_score']) == 100 * float(row['success_rate'])

  with open(os.path.join(out, 'summary.json')) as f:
    summary = json.load(f)
  assert summary['steps'] == STEPS and summary['domain'] == 'hand_finetune'
  assert summary['config']['batch_size'] == 32
  assert summary['config']['expectile'] == 0.6  # The flag's, not the preset's.
  assert summary['config']['actor_cosine_decay'] is False
  assert summary['config']['temperature'] == 3.0  # hand_finetune's.
  # Not the embedded stand-in: none of its tuned values.
  assert summary['config']['online_actor_learning_rate'] is None
  assert summary['final_eval']['learner_steps'] == STEPS
  _assert_png(os.path.join(out, 'learning_curve.png'))


MULTI_STEPS, MULTI_OFFLINE_STEPS, MULTI_EVAL_EVERY = 60, 30, 30
MULTI_SEEDS = (0, 1)
ACTOR_LR = 3e-4  # IQLConfig's actor_learning_rate (the preset keeps it).


def test_seeds_train_together_and_summarise_across_seeds(
    pen_random_npz, tmp_path, capsys):
  out = str(tmp_path / 'seeds')
  common = ['--env', 'pen-binary-v0', '--dataset', pen_random_npz,
            '--steps', str(MULTI_STEPS),
            '--offline_steps', str(MULTI_OFFLINE_STEPS),
            '--eval_every', str(MULTI_EVAL_EVERY), '--eval_episodes', '1',
            '--batch_size', '32']
  train_offline.main(common + ['--out', out, '--seeds',
                               ','.join(map(str, MULTI_SEEDS))])
  assert 'per seed x 2' in capsys.readouterr().out

  finals = []
  for seed in MULTI_SEEDS:
    seed_dir = os.path.join(out, f'seed_{seed}')
    evals = _rows(os.path.join(seed_dir, 'eval.csv'))
    assert [int(r['learner_steps']) for r in evals] == [
        0, MULTI_EVAL_EVERY, MULTI_STEPS]
    for key in ('mean_return', 'normalized_score', 'success_rate'):
      assert all(r[key] != '' for r in evals)
    train = _rows(os.path.join(seed_dir, 'train.csv'))
    assert int(train[-1]['learner_steps']) == MULTI_STEPS
    # --offline_steps sets the actor schedule: cosine below it (the first
    # chunk's mean rate is under the peak), constant past it (the second
    # chunk, steps 30-59).
    assert float(train[0]['actor_lr']) < ACTOR_LR
    assert math.isclose(float(train[-1]['actor_lr']), ACTOR_LR, rel_tol=1e-6)
    with open(os.path.join(seed_dir, 'summary.json')) as f:
      seed_summary = json.load(f)
    assert seed_summary['seed'] == seed
    assert seed_summary['offline_steps'] == MULTI_OFFLINE_STEPS
    finals.append(seed_summary['final_eval'])
    _assert_png(os.path.join(seed_dir, 'learning_curve.png'))
  # Seeds are independent: different training curves.
  losses = [[float(r['critic_loss']) for r in _rows(
      os.path.join(out, f'seed_{s}', 'train.csv'))] for s in MULTI_SEEDS]
  assert losses[0] != losses[1]

  with open(os.path.join(out, 'summary.json')) as f:
    summary = json.load(f)
  assert summary['seeds'] == list(MULTI_SEEDS)
  assert summary['steps'] == MULTI_STEPS
  assert summary['final_eval'] == {str(s): e for s, e in zip(MULTI_SEEDS,
                                                             finals)}
  for key in ('normalized_score', 'success_rate'):
    values = [e[key] for e in finals]
    assert summary[key]['values'] == values
    assert math.isclose(summary[key]['mean'], sum(values) / len(values))
    mean = sum(values) / len(values)
    stderr = math.sqrt(sum((v - mean)**2 for v in values)
                       / (len(values) - 1) / len(values))
    assert math.isclose(summary[key]['stderr'], stderr, abs_tol=1e-12)

  # Seed 1 of the vmapped run is the run of --seed 1 alone.
  single = str(tmp_path / 'single')
  train_offline.main(common + ['--out', single, '--seed', '1'])
  single_train = _rows(os.path.join(single, 'train.csv'))
  vmapped_train = _rows(os.path.join(out, 'seed_1', 'train.csv'))
  assert len(single_train) == len(vmapped_train)
  for a, b in zip(single_train, vmapped_train):
    for key in LOSSES:
      assert math.isclose(float(a[key]), float(b[key]), rel_tol=1e-4,
                          abs_tol=1e-6)


def test_as_finetune_learner_trains_what_the_runs_learner_trains(
    pen_random_npz, tmp_path):
  """The control starts from the fine-tuned run's learner key (seed 2, 3
  actors) and makes the updates that run's IQLLearner makes offline."""
  seed, num_actors, steps = 2, 3, 200
  common = ['--env', 'pen-binary-v0', '--dataset', pen_random_npz,
            '--steps', str(steps), '--offline_steps', str(steps),
            '--eval_every', str(steps), '--eval_episodes', '1',
            '--batch_size', '32', '--seed', str(seed)]
  paired, plain = str(tmp_path / 'paired'), str(tmp_path / 'plain')
  train_offline.main(common + ['--out', paired,
                               '--as_finetune_learner', str(num_actors)])
  train_offline.main(common + ['--out', plain])

  env = envs.make_environment('pen-binary-v0', seed=0)
  spec = train_offline.environment_spec(env)
  data, transform = load_dataset(
      pen_random_npz, domain=envs.domain_of('pen-binary-v0'),
      obs_dim=spec.observations.shape[0], act_dim=spec.actions.shape[0])
  config = config_for_domain(
      envs.domain_of('pen-binary-v0'), batch_size=32, offline_steps=steps,
      offline_steps_per_call=train_offline.steps_per_call(steps))
  logger = loggers.InMemoryLogger()
  learner = learning.IQLLearner(
      iql_networks.make_networks(spec, config), config,
      training.run_keys(seed, num_actors)[0], data,
      reward_transform=transform, logger=logger)
  while learner.in_offline_phase:
    learner.step()

  paired_rows = _rows(os.path.join(paired, 'train.csv'))
  plain_rows = _rows(os.path.join(plain, 'train.csv'))
  assert len(paired_rows) == len(logger.data) == len(plain_rows) > 1
  for ours, runs in zip(paired_rows, logger.data):
    for key in LOSSES:
      assert math.isclose(float(ours[key]), runs[key], rel_tol=1e-4,
                          abs_tol=1e-6)
  assert ([float(r['critic_loss']) for r in plain_rows]
          != [r['critic_loss'] for r in logger.data])  # The key matters.
  with open(os.path.join(paired, 'summary.json')) as f:
    assert json.load(f)['as_finetune_learner'] == num_actors


def test_on_the_embedded_standin_the_control_takes_the_launchers_config(
    tmp_path):
  """Same data, same config: the stand-in's tuned rate, as run_finetune."""
  from iql_acme import run_setup  # pylint: disable=g-import-not-at-top
  embedded = run_setup.embedded_dataset_dir('pen-binary-v0')
  out = str(tmp_path / 'run')
  train_offline.main(['--env', 'pen-binary-v0', '--dataset', embedded,
                      '--out', out, '--steps', '20', '--eval_every', '20',
                      '--eval_episodes', '1', '--batch_size', '32'])
  with open(os.path.join(out, 'summary.json')) as f:
    config = json.load(f)['config']
  launcher = run_setup.make_config('pen-binary-v0', batch_size=32)
  assert config['online_actor_learning_rate'] == (
      launcher.online_actor_learning_rate) is not None
  assert config['expectile'] == launcher.expectile


@pytest.mark.parametrize('flags,message', [
    (['--env', 'pong-v9'], '--env'),
    (['--dataset', '/nonexistent/data.npz'], '--dataset'),
    (['--steps', '0'], '--steps'),
    (['--eval_every', 'ten'], '--eval_every'),
    (['--seeds', '0,x'], '--seeds'),
    (['--seeds', '1,1'], '--seeds'),
    (['--offline_steps', '-5'], '--offline_steps'),
    (['--as_finetune_learner', '0'], '--as_finetune_learner'),
    (['--seed', '1', '--seeds', '2,3'], '--seeds'),
    (['--expectile', '1'], '--expectile (tau) must be in (0, 1)'),
    (['--temperature', '-2'], '--temperature (beta) must be >= 0'),
    (['--actor_cosine_decay', 'yes'], '--actor_cosine_decay'),
    (['--online_actor_learning_rate', '-1'],
     '--online_actor_learning_rate must be >= 0'),
])
def test_bad_flags_one_line_error_exit_2(pen_random_npz, tmp_path, capsys,
                                         flags, message):
  argv = {'--env': 'pen-binary-v0', '--dataset': pen_random_npz,
          '--out': str(tmp_path / 'run'), '--steps': '10'}
  argv.update(dict(zip(flags[::2], flags[1::2])))
  with pytest.raises(SystemExit) as exit_info:
    train_offline.main([x for kv in argv.items() for x in kv])
  assert exit_info.value.code == 2
  stderr = capsys.readouterr().err.strip()
  assert len(stderr.splitlines()) == 1 and message in stderr
  assert stderr.startswith('train_offline.py: error:')


def test_missing_dataset_cli_exits_2_without_traceback(tmp_path):
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'experiments', 'train_offline.py'),
       '--env', 'pen-binary-v0', '--dataset', str(tmp_path / 'missing.npz'),
       '--out', str(tmp_path / 'run')],
      capture_output=True, text=True, timeout=120,
      env={**os.environ, 'D4RL_SUPPRESS_IMPORT_ERROR': '1'}, check=False)
  assert result.returncode == 2
  assert 'Traceback' not in result.stderr
  assert 'train_offline.py: error: --dataset' in result.stderr


def _write_csv(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)


def test_plot_run_draws_distributed_run_layout(tmp_path):
  workdir = str(tmp_path / 'finetune')
  logs = os.path.join(workdir, 'logs')
  evals = [dict(learner_steps=s, actor_steps=0, phase='offline',
                mean_return=-100 + s / 500, normalized_score=s / 500,
                success_rate=s / 50000, episodes=10, wall_time_s=s / 100)
           for s in range(0, 25001, 5000)]
  evals += [dict(learner_steps=25000 + a, actor_steps=a, phase='online',
                 mean_return=-50 + a / 1000, normalized_score=50 + a / 1000,
                 success_rate='', episodes=10, wall_time_s=250 + a / 100)
            for a in range(5000, 30001, 5000)]
  _write_csv(os.path.join(logs, 'evaluator.csv'), evals)
  _write_csv(os.path.join(logs, 'learner.csv'), [
      dict(learner_steps=s, updates_per_s=0 if s == 100 else 120,
           critic_loss=1 / s, value_loss=0.1 / s, actor_loss=5 - s / 1e4,
           phase='offline' if s <= 25000 else 'online')
      for s in range(100, 55001, 100)])
  _write_csv(os.path.join(logs, 'actor.csv'), [
      dict(actor_steps=100 * e, actor_episodes=e, episode_return=-100 + e)
      for e in range(1, 301)])

  plot_run.main([workdir])
  _assert_png(os.path.join(workdir, 'learning_curve.png'))
  # The same from the train_offline layout, with a repeated header line
  # (an appending logger that was restarted).
  other = str(tmp_path / 'offline')
  _write_csv(os.path.join(other, 'eval.csv'), evals[:6])
  with open(os.path.join(other, 'eval.csv'), 'a') as f:
    f.write(','.join(EVAL_CSV_FIELDS) + '\n')
  assert len(plot_run.read_rows(os.path.join(other, 'eval.csv'))) == 6
  _assert_png(plot_run.plot_run(other))


def test_plot_run_without_evaluations_exits_2(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    plot_run.main([str(tmp_path)])
  assert exit_info.value.code == 2
  assert 'no evaluation CSV' in capsys.readouterr().err


def _finetune_evals(offset):
  evals = [dict(learner_steps=s, actor_steps=0,
                phase='offline_end' if s == 200 else 'offline',
                normalized_score=10 + offset, normalized_score_se=1,
                success_rate=(10 + offset) / 100, episodes=10)
           for s in (100, 200)]
  evals += [dict(learner_steps=200 + a + offset, actor_steps=a,
                 phase='final' if a == 300 else 'online',
                 normalized_score=20 + a / 10 + offset, normalized_score_se=1,
                 success_rate=(20 + a / 10 + offset) / 100, episodes=10)
            for a in (100, 200, 300)]
  return evals


def test_plot_run_of_several_seeds_draws_their_mean_and_writes_it(tmp_path):
  workdirs = []
  for seed, offset in enumerate((0, 4, 11)):
    workdirs.append(str(tmp_path / 'runs' / f'seed_{seed}'))
    _write_csv(os.path.join(workdirs[-1], 'logs', 'evaluator.csv'),
               _finetune_evals(offset))
  plot_run.main(workdirs)
  png = str(tmp_path / 'runs' / plot_run.SEEDS_OUTPUT_NAME)
  _assert_png(png)
  table = _rows(png.replace('.png', '.csv'))
  assert [r['phase'] for r in table] == ['offline', 'offline_end', 'online',
                                         'online', 'final']
  offsets = np.array([0., 4., 11.])
  for row, base in zip(table, (10, 10, 30, 40, 50)):
    assert float(row['mean']) == pytest.approx(base + offsets.mean())
    assert float(row['se']) == pytest.approx(offsets.std(ddof=1) / math.sqrt(3))
    assert [float(row[f'seed_{i}']) for i in range(3)] == list(base + offsets)
  # Steps are the runs' mean (evaluations land a few updates apart).
  assert float(table[2]['learner_steps']) == pytest.approx(300 + 5)


def test_plot_run_of_seeds_with_other_grids_exits_2(tmp_path, capsys):
  a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
  _write_csv(os.path.join(a, 'logs', 'evaluator.csv'), _finetune_evals(0))
  _write_csv(os.path.join(b, 'logs', 'evaluator.csv'), _finetune_evals(0)[:4])
  with pytest.raises(SystemExit) as exit_info:
    plot_run.main([a, b])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert 'the runs differ in their evaluations' in err and len(
      err.strip().splitlines()) == 1
