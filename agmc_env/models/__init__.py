"""Model definitions that torchvision does not ship (the CIFAR ResNets)."""
from agmc_env.models.cifar_resnet import CifarResNet, cifar_resnet

__all__ = ["CifarResNet", "cifar_resnet"]
