"""Environments for IQL: AWAC's binary hand tasks, D4RL locomotion, maze2d.

All are dm_env environments over gymnasium simulators; see `registry` for the
names and `dm_env_wrapper` for the conversion rules.
"""

from iql_acme.envs.dm_env_wrapper import GymnasiumToDmEnv
from iql_acme.envs.registry import domain_of
from iql_acme.envs.registry import episode_success
from iql_acme.envs.registry import is_binary_task
from iql_acme.envs.registry import KNOWN_ENVIRONMENTS
from iql_acme.envs.registry import make_environment
from iql_acme.envs.registry import make_gymnasium_env
from iql_acme.envs.registry import max_episode_steps
from iql_acme.envs.registry import normalized_score
from iql_acme.envs.registry import success_steps_threshold
