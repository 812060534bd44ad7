"""experiments/tau_ablation.py end to end with tiny settings."""

import csv
import json
import math
import os
import sys

import dm_env
from dm_env import specs
import numpy as np
import pytest

from iql_acme import envs
from iql_acme import learning

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'experiments'))
import tau_ablation  # pylint: disable=g-import-not-at-top,wrong-import-position

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
ENV = 'maze2d-medium-v1'
TAUS = (0.5, 0.9)
SEEDS = (3,)
STEPS, EVAL_EVERY, DATA_STEPS = 50, 25, 300


def _rows(path):
  with open(path, newline='') as f:
    reader = csv.DictReader(f)
    return reader.fieldnames, list(reader)


@pytest.fixture(scope='module')
def ablation(tmp_path_factory):
  """One tiny ablation; the expectiles the learners were built with."""
  out = str(tmp_path_factory.mktemp('tau') / 'run')
  expectiles = []

  class SpyLearner(learning.IQLLearner):

    def __init__(self, networks, config, *args, **kwargs):
      expectiles.append(config.expectile)
      super().__init__(networks, config, *args, **kwargs)

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(learning, 'IQLLearner', SpyLearner)
    tau_ablation.main([
        '--layout', 'medium', '--out', out,
        '--taus', ','.join(map(str, TAUS)),
        '--seeds', ','.join(map(str, SEEDS)), '--steps', str(STEPS),
        '--eval_every', str(EVAL_EVERY), '--eval_episodes', '1',
        '--num_data_steps', str(DATA_STEPS), '--batch_size', '32'])
  return out, expectiles


def test_final_table_one_finite_row_per_tau_and_seed(ablation):
  out, expectiles = ablation
  fields, rows = _rows(os.path.join(out, 'tau_ablation.csv'))
  assert tuple(fields) == tau_ablation.FINAL_FIELDS
  assert [(float(r['tau']), int(r['seed'])) for r in rows] == [
      (t, s) for t in TAUS for s in SEEDS]
  # The recorded taus are the ones the learners were actually built with.
  assert expectiles == [float(r['tau']) for r in rows]
  for row in rows:
    assert all(math.isfinite(float(row[k])) for k in fields)
    assert int(row['learner_steps']) == STEPS and int(row['episodes']) == 1
    assert 0.0 <= float(row['success_fraction']) <= 1.0
    assert float(row['normalized_score']) == pytest.approx(
        envs.normalized_score(ENV, float(row['mean_return'])))


def test_curves_evaluate_every_run_at_start_interval_and_end(ablation):
  out, _ = ablation
  fields, rows = _rows(os.path.join(out, 'tau_ablation_curves.csv'))
  assert tuple(fields) == tau_ablation.CURVE_FIELDS
  for tau in TAUS:
    for seed in SEEDS:
      mine = [r for r in rows
              if float(r['tau']) == tau and int(r['seed']) == seed]
      assert [int(r['learner_steps']) for r in mine] == [0, EVAL_EVERY, STEPS]
      assert os.path.getsize(
          os.path.join(out, f'tau_{tau:g}_seed_{seed}', 'train.csv')) > 0
  for row in rows:
    # maze2d's reward is 1 exactly on goal steps: success iff return > 0.
    assert (float(row['success_fraction']) > 0) == (
        float(row['mean_return']) > 0)


def test_json_matches_csv_and_png_written(ablation):
  out, _ = ablation
  with open(os.path.join(out, 'tau_ablation.json')) as f:
    result = json.load(f)
  _, rows = _rows(os.path.join(out, 'tau_ablation.csv'))
  assert result['env'] == ENV and result['flags']['taus'] == list(TAUS)
  assert result['preset']['temperature'] == 10.0  # antmaze's beta
  assert [e['tau'] for e in result['summary']] == list(TAUS)
  for entry, row in zip(result['final'], rows):
    assert entry['tau'] == float(row['tau'])
    assert entry['normalized_score'] == pytest.approx(
        float(row['normalized_score']))
  for entry in result['summary']:
    assert entry['seeds'] == len(SEEDS)
    assert all(math.isfinite(v) for v in entry.values())
  with open(os.path.join(out, 'tau_ablation.png'), 'rb') as f:
    assert f.read(len(PNG_MAGIC)) == PNG_MAGIC


def test_dataset_reused_when_present(ablation, capsys):
  out, _ = ablation
  path = os.path.join(out, f'{ENV}_{DATA_STEPS}.hdf5')
  mtime = os.path.getmtime(path)
  assert tau_ablation.ensure_dataset(out, 'medium', DATA_STEPS) == path
  assert os.path.getmtime(path) == mtime
  assert 'reusing' in capsys.readouterr().out


class _ScriptedEnv(dm_env.Environment):
  """Episodes of 3 steps; `goal_steps[e]` lists episode e's goal steps."""

  def __init__(self, goal_steps):
    self._goal_steps, self._episode, self._t = goal_steps, -1, 0
    self.last_info = {}

  def reset(self):
    self._episode, self._t = self._episode + 1, 0
    return dm_env.restart(np.zeros(4, np.float32))

  def step(self, action):
    self._t += 1
    reached = self._t in self._goal_steps[self._episode]
    self.last_info = {'goal_achieved': reached}
    observation = np.zeros(4, np.float32)
    if self._t == 3:
      return dm_env.truncation(float(reached), observation)
    return dm_env.transition(float(reached), observation)

  def observation_spec(self):
    return specs.Array((4,), np.float32)

  def action_spec(self):
    return specs.BoundedArray((2,), np.float32, -1.0, 1.0)


def test_success_fraction_counts_episodes_that_reached_the_goal():
  tracker = tau_ablation.GoalTracker(_ScriptedEnv([[2], [], [1, 3], []]))
  result = tau_ablation.evaluate_with_success(
      tracker, ENV, lambda obs: np.zeros(2, np.float32), episodes=4)
  assert result['success_fraction'] == 0.5
  assert result['mean_return'] == 0.75


def test_rejects_tau_outside_unit_interval(tmp_path):
  with pytest.raises(SystemExit) as exit_info:
    tau_ablation.main(['--out', str(tmp_path), '--taus', '0.5,1.0'])
  assert exit_info.value.code == 2
