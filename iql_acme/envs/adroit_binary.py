"""The binary-reward dexterous hand tasks of AWAC (Nair et al. 2020).

`pen-binary-v0`, `door-binary-v0` and `relocate-binary-v0` come from AWAC's
fork of mj_envs, which needs mujoco_py. gymnasium-robotics'
`AdroitHand{Pen,Door,Relocate}Sparse-v1` simulate the same hands with the same
observation layouts and the same success tests, but pay 10 on success and -0.1
otherwise, call the flag `info['success']` and cut episodes at 200 steps.
`BinaryHandReward` restores AWAC's reward (goal_achieved - 1, so 0 or -1) and
`info['goal_achieved']`; the registry re-makes the env with AWAC's time limit.
"""

import gymnasium

# AWAC's names -> (gymnasium-robotics id, AWAC's time limit in steps).
BINARY_TASKS = {
    'pen-binary-v0': ('AdroitHandPenSparse-v1', 100),
    'door-binary-v0': ('AdroitHandDoorSparse-v1', 200),
    'relocate-binary-v0': ('AdroitHandRelocateSparse-v1', 200),
}

# A trajectory counts as a success when the goal holds for MORE than this many
# steps (the rule of the DAPG/AWAC evaluation code).
SUCCESS_STEPS_THRESHOLD = {
    'pen-binary-v0': 20,
    'door-binary-v0': 25,
    'relocate-binary-v0': 25,
}

_REWARD_SUCCESS = 0.0
_REWARD_FAILURE = -1.0


class BinaryHandReward(gymnasium.Wrapper):
  """Reward goal_achieved - 1 and `info['goal_achieved']`; never terminates."""

  def reset(self, **kwargs):
    observation, info = self.env.reset(**kwargs)
    # No step has been taken yet, so there is nothing achieved to count.
    info['goal_achieved'] = False
    return observation, info

  def step(self, action):
    observation, _, _, truncated, info = self.env.step(action)
    goal_achieved = bool(info['success'])
    info['goal_achieved'] = goal_achieved
    reward = _REWARD_SUCCESS if goal_achieved else _REWARD_FAILURE
    # AWAC's binary tasks never terminate; only the time limit ends them.
    return observation, reward, False, truncated, info
