"""experiments/train_offline.py end to end, and experiments/plot_run.py."""

import csv
import json
import math
import os
import subprocess
import sys

import pytest

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
      '--eval_episodes', '1', '--batch_size', '32', '--seed', '1'])
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
  assert summary['final_eval']['learner_steps'] == STEPS
  _assert_png(os.path.join(out, 'learning_curve.png'))


@pytest.mark.parametrize('flags,message', [
    (['--env', 'pong-v9'], '--env'),
    (['--dataset', '/nonexistent/data.npz'], '--dataset'),
    (['--steps', '0'], '--steps'),
    (['--eval_every', 'ten'], '--eval_every'),
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
