"""Deterministic-policy evaluation: returns, scores, success rates, and their
standard errors, on the same start states at every evaluation."""

import csv
import math
import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import dm_env
import numpy as np

from iql_acme import envs

# A success rate's standard error sqrt(p (1 - p) / (n - 1)) is largest at
# p = 0.5; the default episode count keeps it at or under this for any p.
MAX_SUCCESS_RATE_SE = 0.07
DEFAULT_EVAL_EPISODES = 1 + math.ceil(0.25 / MAX_SUCCESS_RATE_SE**2)  # 53
# The two evaluations a run is judged by, at the offline end and at the end,
# use more episodes: half that standard error, so a fine-tuning gain of a few
# points is not lost in the noise of the start states.
FINAL_MAX_SUCCESS_RATE_SE = MAX_SUCCESS_RATE_SE / 2
FINAL_EVAL_EPISODES = 1 + math.ceil(0.25 / FINAL_MAX_SUCCESS_RATE_SE**2)  # 206

# Evaluation episode i starts from env seed EVAL_SEED_BASE + i, every time, so
# two checkpoints (or two runs, or the fine-tuned policy and its control) are
# compared on the same start states and goals. Disjoint from the seeds of the
# actors, data generators and tests (all below 10^7).
EVAL_SEED_BASE = 10_000_000

# Columns of the evaluator's CSV (read by experiments/plot_run.py).
EVAL_CSV_FIELDS = ('learner_steps', 'actor_steps', 'phase', 'mean_return',
                   'return_se', 'normalized_score', 'normalized_score_se',
                   'success_rate', 'success_rate_se', 'episodes',
                   'wall_time_s')


def evaluation_seeds(num_episodes: int,
                     base: int = EVAL_SEED_BASE) -> Sequence[int]:
  return range(base, base + num_episodes)


def standard_error(values) -> float:
  """Standard error of the mean (sample std with n - 1; 0 for one value).

  For 0/1 successes this is sqrt(p (1 - p) / (n - 1)), the unbiased form.
  """
  values = np.asarray(values, np.float64)
  if values.size < 2:
    return 0.0
  return float(values.std(ddof=1) / np.sqrt(values.size))


def evaluate(environment: dm_env.Environment, env_name: str,
             select_action: Callable[[np.ndarray], np.ndarray],
             num_episodes: int,
             seeds: Optional[Sequence[int]] = None
             ) -> Dict[str, Optional[float]]:
  """Runs `num_episodes` episodes; mean return and scores with standard errors.

  Episode i starts from `seeds[i]` (default `evaluation_seeds`), when the
  environment can be reseeded (the project's dm_env wrapper can).
  normalized_score is the D4RL score (0-100) where the task has reference
  scores; for the binary hand tasks it is the success rate in percent (an
  episode succeeds when the goal holds for more than 20 steps on pen, 25 on
  door and relocate).
  """
  return evaluate_with_scores(environment, env_name, select_action,
                              num_episodes, seeds)[0]


def evaluate_with_scores(environment: dm_env.Environment, env_name: str,
                         select_action: Callable[[np.ndarray], np.ndarray],
                         num_episodes: int,
                         seeds: Optional[Sequence[int]] = None
                         ) -> Tuple[Dict[str, Optional[float]], List[float]]:
  """`evaluate`, plus each episode's score in seed order (its normalized
  score, else its return), for paired comparisons (`paired_gain`)."""
  if num_episodes <= 0:
    raise ValueError(f'num_episodes must be positive, got {num_episodes}')
  seeds = list(evaluation_seeds(num_episodes) if seeds is None else seeds)
  if len(seeds) < num_episodes:
    raise ValueError(f'{len(seeds)} seeds for {num_episodes} episodes')
  reseed = getattr(environment, 'reseed', None)
  binary = envs.is_binary_task(env_name)
  returns, successes = [], []
  for seed in seeds[:num_episodes]:
    if reseed is not None:
      reseed(seed)
    timestep = environment.reset()
    episode_return, goal_steps = 0.0, []
    while not timestep.last():
      timestep = environment.step(select_action(timestep.observation))
      episode_return += float(timestep.reward)
      if binary:
        goal_steps.append(bool(environment.last_info['goal_achieved']))
    returns.append(episode_return)
    if binary:
      successes.append(float(envs.episode_success(env_name, goal_steps)))
  result = {'mean_return': float(np.mean(returns)),
            'return_se': standard_error(returns),
            'success_rate': None, 'success_rate_se': None,
            'episodes': num_episodes}
  if binary:
    result['success_rate'] = float(np.mean(successes))
    result['success_rate_se'] = standard_error(successes)
    scores = 100.0 * np.asarray(successes)
  else:
    scores = [envs.normalized_score(env_name, r) for r in returns]
    scores = None if scores[0] is None else np.asarray(scores)
  result['normalized_score'] = (None if scores is None else
                                float(np.mean(scores)))
  result['normalized_score_se'] = (None if scores is None else
                                   standard_error(scores))
  return result, [float(x) for x in (returns if scores is None else scores)]


def paired_gain(after: Sequence[float],
                before: Sequence[float]) -> Dict[str, float]:
  """Mean and standard error of after[i] - before[i] over shared episodes.

  Episode i of every evaluation starts from the same seed, so the two
  policies' scores pair up; pairing removes the start states' share of the
  noise, which two independent standard errors would count twice.
  """
  n = min(len(after), len(before))
  if n == 0:
    raise ValueError('paired_gain needs at least one episode in each')
  differences = np.asarray(after[:n], np.float64) - np.asarray(before[:n],
                                                               np.float64)
  return {'mean': float(differences.mean()),
          'se': standard_error(differences), 'episodes': n}


class CsvWriter:
  """Appends rows to a CSV file, writing the header once (resume-safe)."""

  def __init__(self, path: str, fields=EVAL_CSV_FIELDS):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self._path, self._fields = path, fields
    if not os.path.exists(path) or os.path.getsize(path) == 0:
      with open(path, 'w', newline='') as f:
        csv.DictWriter(f, fields).writeheader()

  def write(self, row: Dict):
    with open(self._path, 'a', newline='') as f:
      csv.DictWriter(f, self._fields, extrasaction='ignore').writerow(
          {k: ('' if row.get(k) is None else row.get(k)) for k in self._fields})
