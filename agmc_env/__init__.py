"""agmc_env: neural-network channel pruning as a gymnasium environment (AMC's MDP, AGMC's graph state).

Importing the package registers the environment ids; ``gymnasium.make("agmc_env:AGMC-ResNet56-v0")``
imports it on demand.
"""
from gymnasium.envs.registration import register

from agmc_env.env import AGMCEnv

__all__ = ["AGMCEnv"]

# max_episode_steps is left unset: episodes end by `terminated` after the last decision, whose count
# depends on the model and options (a TimeLimit of the wrong length would truncate or never fire).
register(id="AGMC-v0", entry_point="agmc_env.env:AGMCEnv")
register(id="AGMC-ResNet20-v0", entry_point="agmc_env.env:AGMCEnv",
         kwargs={"model": "resnet20", "dataset": "cifar10", "flops_target": 0.5})
register(id="AGMC-ResNet56-v0", entry_point="agmc_env.env:AGMCEnv",
         kwargs={"model": "resnet56", "dataset": "cifar10", "flops_target": 0.5})
