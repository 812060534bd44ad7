"""Deterministic-policy evaluation: returns, normalized scores, success rates."""

import csv
import os
from typing import Callable, Dict, Optional

import dm_env
import numpy as np

from iql_acme import envs

# Columns of the evaluator's CSV (read by experiments/plot_run.py).
EVAL_CSV_FIELDS = ('learner_steps', 'actor_steps', 'phase', 'mean_return',
                   'normalized_score', 'success_rate', 'episodes',
                   'wall_time_s')


def evaluate(environment: dm_env.Environment, env_name: str,
             select_action: Callable[[np.ndarray], np.ndarray],
             num_episodes: int) -> Dict[str, Optional[float]]:
  """Runs `num_episodes` episodes and reports mean return and scores.

  normalized_score is the D4RL score (0-100) where the task has reference
  scores; for the binary hand tasks it is the success rate in percent (an
  episode succeeds when the goal holds for more than 20 steps on pen, 25 on
  door and relocate).
  """
  binary = envs.is_binary_task(env_name)
  returns, successes = [], []
  for _ in range(num_episodes):
    timestep = environment.reset()
    episode_return, goal_steps = 0.0, []
    while not timestep.last():
      timestep = environment.step(select_action(timestep.observation))
      episode_return += float(timestep.reward)
      if binary:
        goal_steps.append(bool(environment.last_info['goal_achieved']))
    returns.append(episode_return)
    if binary:
      successes.append(envs.episode_success(env_name, goal_steps))
  mean_return = float(np.mean(returns))
  success_rate = float(np.mean(successes)) if binary else None
  if binary:
    score = 100.0 * success_rate
  else:
    score = envs.normalized_score(env_name, mean_return)
  return {'mean_return': mean_return, 'normalized_score': score,
          'success_rate': success_rate, 'episodes': num_episodes}


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
