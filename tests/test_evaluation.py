"""Evaluation: fixed start states, standard errors, the episode-count default."""

import csv
import math

import numpy as np
import pytest

from iql_acme import envs
from iql_acme import evaluation

PEN = 'pen-binary-v0'


def zero_action(observation):
  del observation
  return np.zeros(24, np.float32)


def first_observations(env, seeds):
  out = []
  for seed in seeds:
    env.reseed(seed)
    out.append(env.reset().observation)
  return np.stack(out)


def test_every_evaluation_starts_from_the_same_states():
  env = envs.make_environment(PEN, seed=3)
  seeds = evaluation.evaluation_seeds(4)
  first = first_observations(env, seeds)
  env.step(np.ones(24, np.float32))  # Move on the env's own random stream.
  env.reset()
  again = first_observations(env, seeds)
  np.testing.assert_array_equal(first, again)
  # Different seeds give different goals (the target orientation, obs 36:39).
  assert len({tuple(np.round(o[36:39], 6)) for o in first}) == len(seeds)


def test_evaluate_is_reproducible_and_independent_of_env_history():
  env_a = envs.make_environment(PEN, seed=1)
  env_b = envs.make_environment(PEN, seed=2)
  for _ in range(3):
    env_b.reset()  # b's own stream is elsewhere; the evaluation is not.
  a = evaluation.evaluate(env_a, PEN, zero_action, 6)
  b = evaluation.evaluate(env_b, PEN, zero_action, 6)
  assert a == b
  other = evaluation.evaluate(env_a, PEN, zero_action, 6,
                              seeds=evaluation.evaluation_seeds(6, base=7))
  assert other['episodes'] == 6


def test_standard_errors_match_their_definitions():
  env = envs.make_environment(PEN, seed=0)
  n = 20
  result = evaluation.evaluate(env, PEN, zero_action, n)
  p = result['success_rate']
  assert result['normalized_score'] == pytest.approx(100 * p)
  expected_se = math.sqrt(p * (1 - p) / (n - 1))
  assert result['success_rate_se'] == pytest.approx(expected_se)
  assert result['normalized_score_se'] == pytest.approx(100 * expected_se)
  assert result['return_se'] >= 0.0


def test_standard_error_helper():
  values = [1.0, 2.0, 4.0, 7.0]
  assert evaluation.standard_error(values) == pytest.approx(
      np.std(values, ddof=1) / 2.0)
  assert evaluation.standard_error([5.0]) == 0.0


@pytest.mark.parametrize('n, bound', [
    (evaluation.DEFAULT_EVAL_EPISODES, evaluation.MAX_SUCCESS_RATE_SE),
    (evaluation.FINAL_EVAL_EPISODES, evaluation.FINAL_MAX_SUCCESS_RATE_SE)])
def test_default_episode_counts_bound_the_success_rate_se(n, bound):
  assert n >= 50
  worst = max(math.sqrt(k / n * (1 - k / n) / (n - 1)) for k in range(n + 1))
  assert worst <= bound
  smaller = n - 1
  worst_smaller = max(math.sqrt(k / smaller * (1 - k / smaller) /
                                (smaller - 1)) for k in range(smaller + 1))
  assert worst_smaller > bound  # n is the least.


def test_episode_scores_are_the_per_episode_terms_of_the_mean():
  env = envs.make_environment(PEN, seed=0)
  result, scores = evaluation.evaluate_with_scores(env, PEN, zero_action, 5)
  assert result == evaluation.evaluate(env, PEN, zero_action, 5)
  assert len(scores) == 5 and set(scores) <= {0.0, 100.0}
  assert np.mean(scores) == pytest.approx(result['normalized_score'])
  assert evaluation.standard_error(scores) == pytest.approx(
      result['normalized_score_se'])


def test_paired_gain_pairs_episodes_by_start_state():
  before = [0.0, 100.0, 0.0, 100.0, 100.0]
  after = [100.0, 100.0, 0.0, 100.0, 100.0, 0.0]  # One more episode.
  gain = evaluation.paired_gain(after, before)
  differences = np.array([100.0, 0.0, 0.0, 0.0, 0.0])
  assert gain['episodes'] == 5
  assert gain['mean'] == pytest.approx(differences.mean())
  assert gain['se'] == pytest.approx(differences.std(ddof=1) / np.sqrt(5))
  # A policy that did not change has a gain of exactly 0 +- 0 when paired;
  # paired with other start states, the same scores seem to differ.
  same = [0.0, 0.0, 100.0, 100.0, 100.0]
  assert evaluation.paired_gain(same, same) == {'mean': 0.0, 'se': 0.0,
                                                'episodes': 5}
  unpaired = evaluation.paired_gain(same, same[::-1])
  assert unpaired['mean'] == pytest.approx(0.0) and unpaired['se'] > 40
  with pytest.raises(ValueError, match='at least one episode'):
    evaluation.paired_gain([], before)


def test_non_binary_task_has_score_se_and_no_success_rate():
  env = envs.make_environment('maze2d-medium-v1', seed=0)
  result = evaluation.evaluate(env, 'maze2d-medium-v1',
                               lambda o: np.zeros(2, np.float32), 2)
  assert result['success_rate'] is None and result['success_rate_se'] is None
  assert result['normalized_score'] is not None
  assert result['normalized_score_se'] is not None


def test_bad_episode_count_is_an_error():
  env = envs.make_environment(PEN, seed=0)
  with pytest.raises(ValueError, match='positive'):
    evaluation.evaluate(env, PEN, zero_action, 0)


def test_csv_rows_carry_standard_errors(tmp_path):
  env = envs.make_environment(PEN, seed=0)
  result = evaluation.evaluate(env, PEN, zero_action, 3)
  path = tmp_path / 'logs' / 'evaluator.csv'
  writer = evaluation.CsvWriter(str(path))
  writer.write({'learner_steps': 10, 'phase': 'offline', **result})
  with open(path) as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 1
  for key in ('return_se', 'normalized_score_se', 'success_rate_se'):
    assert float(rows[0][key]) == pytest.approx(result[key])
