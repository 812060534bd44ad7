"""IQLBuilder inside Acme's own DistributedLayout (Acme 0.4.0), as an Acme user would.

  python experiments/acme_layout.py --env=pen-binary-v0 --dataset=PATH \
      --offline_steps=1000 --online_steps=2000 --workdir=/tmp/iql_layout \
      --lp_launch_type=local_mp

Acme's layout provides the replay, counter, learner, actor and evaluator
nodes and stops the program (StepsLimiter) after --online_steps actor steps;
IQLBuilder provides everything IQL-specific.
"""

import functools
import os

from absl import app
from absl import flags
from acme.jax.layouts import distributed_layout
from acme.utils import loggers
import launchpad as lp

from iql_acme import envs
from iql_acme import IQLBuilder
from iql_acme import logs
from iql_acme import networks as networks_lib
from iql_acme import run_setup

_ENV = flags.DEFINE_string('env', 'pen-binary-v0', 'Environment name.')
_DATASET = flags.DEFINE_string('dataset', None, 'Dataset (default: embedded).')
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/iql_acme_layout', 'Logs dir.')
_NUM_ACTORS = flags.DEFINE_integer('num_actors', 1, 'Number of actors.')
_OFFLINE_STEPS = flags.DEFINE_integer('offline_steps', 1_000, 'Offline updates.')
_ONLINE_STEPS = flags.DEFINE_integer('online_steps', 2_000, 'Actor steps.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 256, 'Batch size.')
_SEED = flags.DEFINE_integer('seed', 0, 'Random seed.')


def make_environment(env_name: str, seed: int):
  return envs.make_environment(env_name, seed)


def make_networks(config, spec):
  return networks_lib.make_networks(spec, config)


def make_behaviour_policy(config, networks):
  return networks_lib.make_behaviour_policy(networks, config)


def make_learner_logger(workdir: str) -> loggers.Logger:
  return logs.make_logger(workdir, 'learner', time_delta=1.0)


def main(_):
  env_name = _ENV.value
  config = run_setup.make_config(
      env_name, dataset=_DATASET.value, offline_steps=_OFFLINE_STEPS.value,
      online_steps=_ONLINE_STEPS.value, batch_size=_BATCH_SIZE.value)
  spec_env = envs.make_environment(env_name, 0)
  dataset_fn = run_setup.make_offline_dataset_fn(
      env_name, _DATASET.value, spec_env.observation_spec().shape[0],
      spec_env.action_spec().shape[0])
  builder = IQLBuilder(config, dataset_fn, logger_fn=functools.partial(
      make_learner_logger, os.path.abspath(_WORKDIR.value)))
  environment_factory = functools.partial(make_environment, env_name)
  network_factory = functools.partial(make_networks, config)
  layout = distributed_layout.DistributedLayout(
      seed=_SEED.value,
      environment_factory=environment_factory,
      network_factory=network_factory,
      builder=builder,
      policy_network=functools.partial(make_behaviour_policy, config),
      num_actors=_NUM_ACTORS.value,
      evaluator_factories=[distributed_layout.default_evaluator_factory(
          environment_factory, network_factory,
          networks_lib.make_evaluation_policy)],
      max_number_of_steps=_ONLINE_STEPS.value,
      checkpointing_config=distributed_layout.CheckpointingConfig(
          directory=os.path.join(os.path.abspath(_WORKDIR.value), 'acme'),
          add_uid=False))
  manager = lp.launch(layout.build(name='iql_acme_layout'),
                      terminal='current_terminal')
  manager.wait()  # lp.launch returns once the nodes are started.


if __name__ == '__main__':
  app.run(main)
