"""agmc_env: neural-network channel pruning as a gymnasium environment (AMC's MDP, AGMC's graph state).

Importing the package registers the environment ids; ``gymnasium.make("agmc_env:AGMC-ResNet56-v0")``
imports it on demand. ``make_task`` builds the fixed part of a problem once, to share between envs.
"""
from gymnasium.envs.registration import register

from agmc_env.env import AGMCEnv
from agmc_env.task import PruningTask, make_task

__all__ = ["AGMCEnv", "PruningTask", "make_task"]

# max_episode_steps = the preset's decision count with its default options. Options that change the count
# (prune_residual=True, prune_linear=True) need max_episode_steps=T or -1 in gym.make: the env ends its
# episodes itself (terminated after the last decision), and the wrapper cannot be seen from inside it.
register(id="AGMC-v0", entry_point="agmc_env.env:AGMCEnv")
register(id="AGMC-ResNet20-v0", entry_point="agmc_env.env:AGMCEnv", max_episode_steps=9,
         kwargs={"model": "resnet20", "dataset": "cifar10", "flops_target": 0.5})
register(id="AGMC-ResNet56-v0", entry_point="agmc_env.env:AGMCEnv", max_episode_steps=27,
         kwargs={"model": "resnet56", "dataset": "cifar10", "flops_target": 0.5})
# ImageNet presets (torchvision IMAGENET1K_V1 weights; data: an ImageFolder tree with train/ and val/).
register(id="AGMC-MobileNetV2-v0", entry_point="agmc_env.env:AGMCEnv", max_episode_steps=18,
         kwargs={"model": "mobilenet_v2", "dataset": "imagenet", "flops_target": 0.7})
register(id="AGMC-VGG16-v0", entry_point="agmc_env.env:AGMCEnv", max_episode_steps=13,
         kwargs={"model": "vgg16", "dataset": "imagenet", "flops_target": 0.2})
# Seconds-long synthetic env for tests and smoke grids (agmc_env.testing; no data or checkpoint needed).
register(id="AGMCTest-Tiny-v0", entry_point="agmc_env.testing:tiny_env")
