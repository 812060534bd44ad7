"""Environment names -> simulators, IQL domains, success rules and scores."""

import contextlib
import difflib
import functools
import logging
import os
import re
import warnings
from typing import Optional, Sequence

import dm_env
import gymnasium
import mujoco

from iql_acme.envs import adroit_binary
from iql_acme.envs import dm_env_wrapper
from iql_acme.envs import maze2d

# D4RL's locomotion names -> gymnasium ids (same dims: 17/11/17; 1000 steps).
_LOCOMOTION_GYMNASIUM_IDS = {
    'halfcheetah': 'HalfCheetah-v4',
    'hopper': 'Hopper-v4',
    'walker2d': 'Walker2d-v4',
}
_LOCOMOTION_DATASETS = ('random', 'medium', 'medium-replay', 'medium-expert',
                        'expert')
_LOCOMOTION_VERSION = 'v2'
_LOCOMOTION_TIME_LIMIT = 1000
_LOCOMOTION_NAMES = tuple(
    f'{robot}-{dataset}-{_LOCOMOTION_VERSION}'
    for robot in _LOCOMOTION_GYMNASIUM_IDS for dataset in _LOCOMOTION_DATASETS)

KNOWN_ENVIRONMENTS = (tuple(adroit_binary.BINARY_TASKS) + _LOCOMOTION_NAMES +
                      tuple(maze2d.MAZE2D_TASKS))

# Names whose IQL hyperparameter domain is known, buildable here or not.
_DOMAIN_PATTERNS = (
    ('hand_finetune', r'(pen|door|relocate)-binary-v0'),
    ('locomotion', r'(halfcheetah|hopper|walker2d|ant)-(random|medium|'
                   r'medium-replay|medium-expert|expert|full-replay)-v[0-2]'),
    ('antmaze', r'antmaze-(umaze|umaze-diverse|medium-play|medium-diverse|'
                r'large-play|large-diverse)-v[0-2]'),
    # maze2d stands in for AntMaze's stitching (tau ablation).
    ('antmaze', r'maze2d-(umaze|medium|large)-v1'),
    ('adroit', r'(pen|door|relocate|hammer)-(human|cloned|expert)-v[01]'),
    ('kitchen', r'kitchen-.+'),
)


def domain_of(name: str) -> str:
  """The `iql_acme.config.PRESETS` key for environment `name`.

  Accepts D4RL names that cannot be built here too (antmaze-*, kitchen-*,
  adroit human/cloned/expert, ant-*, maze2d-umaze-v1).
  """
  for domain, pattern in _DOMAIN_PATTERNS:
    if re.fullmatch(pattern, name):
      return domain
  raise ValueError(f'no IQL domain for environment {name!r}; known forms: '
                   + ', '.join(pattern for _, pattern in _DOMAIN_PATTERNS))


def is_binary_task(name: str) -> bool:
  """Whether `name` is one of AWAC's binary-reward hand tasks."""
  return name in adroit_binary.BINARY_TASKS


def success_steps_threshold(name: str) -> int:
  """A binary-task episode succeeds if the goal holds MORE steps than this."""
  if not is_binary_task(name):
    raise ValueError(f'{name!r} has no success rule; use one of '
                     f'{sorted(adroit_binary.BINARY_TASKS)}')
  return adroit_binary.SUCCESS_STEPS_THRESHOLD[name]


def episode_success(name: str, goal_achieved_per_step: Sequence[bool]) -> bool:
  """Whether an episode of binary task `name` counts as a success."""
  steps_achieved = sum(bool(achieved) for achieved in goal_achieved_per_step)
  return steps_achieved > success_steps_threshold(name)


def normalized_score(name: str, episode_return: float) -> Optional[float]:
  """100 * (R - ref_min) / (ref_max - ref_min), or None without references.

  References are D4RL's (`d4rl.infos`) where it has the name. For the binary
  hand tasks they are -T (the goal never achieved in T steps) and 0 (always
  achieved), the 0..100 normalisation of the paper's Table 2 (app. C).
  """
  if is_binary_task(name):
    _, time_limit = adroit_binary.BINARY_TASKS[name]
    ref_min, ref_max = -float(time_limit), 0.0
  else:
    infos = _d4rl_infos()
    if name not in infos.REF_MIN_SCORE or name not in infos.REF_MAX_SCORE:
      return None
    ref_min, ref_max = infos.REF_MIN_SCORE[name], infos.REF_MAX_SCORE[name]
  return 100.0 * (float(episode_return) - ref_min) / (ref_max - ref_min)


@functools.lru_cache(maxsize=None)
def _d4rl_infos():
  # d4rl's package import needs this to skip its mujoco_py environments.
  os.environ.setdefault('D4RL_SUPPRESS_IMPORT_ERROR', '1')
  from d4rl import infos  # pylint: disable=g-import-not-at-top
  return infos


@functools.lru_cache(maxsize=None)
def _register_robotics_envs():
  import gymnasium_robotics  # pylint: disable=g-import-not-at-top
  gymnasium.register_envs(gymnasium_robotics)


@contextlib.contextmanager
def _mujoco_warnings_logged():
  # MuJoCo would append its warnings (HalfCheetah's XML uses the deprecated
  # 'settotalmass') to ./MUJOCO_LOG.TXT, littering the working directory.
  previous = mujoco.get_mju_user_warning()
  mujoco.set_mju_user_warning(
      lambda message: logging.info('MuJoCo: %s', message))
  try:
    yield
  finally:
    mujoco.set_mju_user_warning(previous)


def _unknown_name_error(name: str) -> ValueError:
  try:
    domain = domain_of(name)
    why = f'{name!r} (IQL domain {domain!r}) has no simulator in this stack; '
  except ValueError:
    close = difflib.get_close_matches(name, KNOWN_ENVIRONMENTS, n=1)
    hint = f'did you mean {close[0]!r}? ' if close else ''
    why = f'unknown environment {name!r}; {hint}'
  return ValueError(f'{why}choose one of {", ".join(KNOWN_ENVIRONMENTS)}')


def max_episode_steps(name: str) -> int:
  """The time limit of environment `name` (as in D4RL / AWAC)."""
  if name in adroit_binary.BINARY_TASKS:
    return adroit_binary.BINARY_TASKS[name][1]
  if name in maze2d.MAZE2D_TASKS:
    return maze2d.MAZE2D_TASKS[name].max_episode_steps
  if name in _LOCOMOTION_NAMES:
    return _LOCOMOTION_TIME_LIMIT
  raise _unknown_name_error(name)


def make_gymnasium_env(name: str, seed: int) -> gymnasium.Env:
  """The gymnasium environment behind `name`, before dm_env conversion.

  It is already reset once with `seed` (and its action space seeded), so later
  `reset()` calls without a seed continue a reproducible random stream.
  `env.unwrapped` gives the MuJoCo model/data (and, for maze2d, the maze);
  for maze2d the outermost wrapper is `maze2d.D4RLMaze2D` (target, maze_spec,
  set_target, set_state in D4RL's frame).
  """
  time_limit = max_episode_steps(name)  # Raises on unknown names.
  if name in adroit_binary.BINARY_TASKS:
    _register_robotics_envs()
    gymnasium_id, _ = adroit_binary.BINARY_TASKS[name]
    env = adroit_binary.BinaryHandReward(
        gymnasium.make(gymnasium_id, max_episode_steps=time_limit))
  elif name in maze2d.MAZE2D_TASKS:
    _register_robotics_envs()
    task = maze2d.MAZE2D_TASKS[name]
    env = gymnasium.make(task.gymnasium_id, max_episode_steps=time_limit,
                         maze_map=maze2d.gymnasium_maze_map(task.maze_spec),
                         continuing_task=True, reset_target=False)
    env = maze2d.D4RLMaze2D(env, task.maze_spec)
  else:
    robot = name.split('-', 1)[0]
    with warnings.catch_warnings(), _mujoco_warnings_logged():
      # v4 is chosen on purpose: it keeps gym v3's (D4RL v2's) dynamics.
      warnings.simplefilter('ignore', DeprecationWarning)
      env = gymnasium.make(_LOCOMOTION_GYMNASIUM_IDS[robot],
                           max_episode_steps=time_limit)
  env.reset(seed=seed)
  env.action_space.seed(seed)
  return env


def make_environment(name: str, seed: int) -> dm_env.Environment:
  """The dm_env environment for `name` (one of KNOWN_ENVIRONMENTS)."""
  return dm_env_wrapper.GymnasiumToDmEnv(
      make_gymnasium_env(name, seed), seed=seed,
      max_episode_steps=max_episode_steps(name))
