"""The actor loss's critic call differentiates the actions only: the actor's gradient is SB3's, bit for bit, and
the critic's parameters get none (SB3 would compute them, then discard them at the critic's next step)."""
from __future__ import annotations

import pytest
import torch
from stable_baselines3.common.policies import ContinuousCritic

from agents.algorithms import ActorLossCritic, make_agent
from agmc_env.testing import tiny_env


def _actor_loss(model, obs, critic_call):
    if hasattr(model, "ent_coef"):  # SAC: the policy's reparametrised actions through every Q-network
        torch.manual_seed(0)
        actions, _ = model.actor.action_log_prob(obs)
        return -torch.cat(critic_call(model.critic, obs, actions), dim=1).min(1).values.mean()
    return -critic_call(model.critic, obs, model.actor(obs)).mean()


@pytest.mark.parametrize("algo", ["ddpg", "td3", "sac"])
def test_actor_gradients_are_sb3s_and_the_critic_gets_none(algo):
    env = tiny_env()
    T = env.unwrapped.num_decisions
    model = make_agent(algo, env, embedding="gnn", episodes=4, warmup=4, seed=0, batch_size=8)
    model.learn(total_timesteps=2 * T)
    assert isinstance(model.critic, ActorLossCritic) and isinstance(model.critic_target, ActorLossCritic)
    obs = model.replay_buffer.sample(8).observations
    sb3 = ContinuousCritic.forward if algo == "sac" else ContinuousCritic.q1_forward
    ours = ActorLossCritic.forward if algo == "sac" else ActorLossCritic.q1_forward
    grads = []
    for call in (sb3, ours):
        model.actor.zero_grad(set_to_none=True)
        model.critic.zero_grad(set_to_none=True)
        _actor_loss(model, obs, call).backward()
        grads.append(([p.grad.clone() for p in model.actor.parameters()],
                      [p.grad for p in model.critic.parameters() if p.grad is not None]))
    (sb3_actor, sb3_critic), (our_actor, our_critic) = grads
    assert sb3_critic and not our_critic
    assert all(torch.equal(a, b) for a, b in zip(sb3_actor, our_actor))
