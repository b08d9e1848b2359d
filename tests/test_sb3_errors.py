"""Bad input gets a clear error that names the problem and the fix."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch as th
import torch.nn as nn
from stable_baselines3 import PPO
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

from tdmpc_prune import PruneConfigError, PruneError
from tdmpc_prune.sb3 import PruningCallback, get_pruner, load, wrap
from test_sb3 import SCHEDULE, SpaceEnv, make

th.set_num_threads(1)


class FrozenExtractor(BaseFeaturesExtractor):
    """Runs its layer under no_grad: autograd, and so the dependency graph, never sees it."""

    def __init__(self, observation_space: gym.spaces.Box):
        super().__init__(observation_space, 16)
        self.net = nn.Sequential(nn.Linear(int(np.prod(observation_space.shape)), 16), nn.ReLU())

    def forward(self, obs: th.Tensor) -> th.Tensor:
        with th.no_grad():
            return self.net(obs)


BOX = gym.spaces.Box(-1, 1, (3,), np.float32)


def test_a_features_extractor_the_graph_cannot_see() -> None:
    kwargs = dict(features_extractor_class=FrozenExtractor, net_arch=[32, 24])
    with pytest.raises(PruneError, match=r"features_extractor\.net\.0\.weight.*autograd.*exclude=\['features_extractor\.net\.0'\]"):
        wrap(PPO("MlpPolicy", "CartPole-v1", policy_kwargs=kwargs, device="cpu"), **SCHEDULE)
    # the fix the message gives works: the extractor stays dense, the rest is pruned
    model = wrap(PPO("MlpPolicy", "CartPole-v1", policy_kwargs=kwargs, n_steps=64, device="cpu"), exclude=["features_extractor.net.0"], **SCHEDULE)
    model.learn(320)
    assert model.policy.features_extractor.net[0].out_features == 16
    assert get_pruner(model).sparsity() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("sparsity", [1.0, 1.5, -0.1])
def test_sparsity_out_of_range(sparsity: float) -> None:
    with pytest.raises(PruneConfigError, match=r"sparsity must be a fraction in \[0, 1\)"):
        PruningCallback(sparsity=sparsity)
    with pytest.raises(PruneConfigError, match="sparsity"):
        wrap(make("ppo"), sparsity=sparsity)


@pytest.mark.parametrize(
    "obs_space, act_space, words",
    [
        (gym.spaces.Dict({"x": BOX}), gym.spaces.Discrete(2), r"observation space Dict.*FlattenObservation"),
        (BOX, gym.spaces.MultiDiscrete([2, 3]), r"action space MultiDiscrete.*Box or Discrete"),
        (BOX, gym.spaces.MultiBinary(2), r"action space MultiBinary.*Box or Discrete"),
    ],
)
def test_spaces_other_than_box_and_discrete(obs_space: gym.Space, act_space: gym.Space, words: str) -> None:
    policy = "MultiInputPolicy" if isinstance(obs_space, gym.spaces.Dict) else "MlpPolicy"
    model = PPO(policy, SpaceEnv(obs_space, act_space), n_steps=64, device="cpu")
    with pytest.raises(PruneError, match=words):
        wrap(model, **SCHEDULE)
    with pytest.raises(PruneError, match=words):
        model.learn(64, callback=PruningCallback(**SCHEDULE))


def test_unknown_option_and_component() -> None:
    with pytest.raises(PruneConfigError, match="Did you mean 'sparsity'"):
        PruningCallback(sparsty=0.5)
    with pytest.raises(PruneConfigError, match="unknown component 'policy'; components are: policy_net, value_net"):
        wrap(make("ppo"), budgets={"policy": 0.5})
    with pytest.raises(PruneConfigError, match="total_timesteps"):
        PruningCallback(total_timesteps=0)


def test_not_an_sb3_model() -> None:
    with pytest.raises(PruneError, match="expected a Stable-Baselines3 model"):
        wrap(nn.Linear(2, 2))


def test_other_options_on_a_model_already_pruning() -> None:
    model = wrap(make("ppo"), criterion="bayes", **SCHEDULE)
    with pytest.raises(PruneError, match="already being pruned.*same options"):
        model.learn(64, callback=PruningCallback(criterion="magnitude"))
    model.learn(128, callback=PruningCallback())  # no options: reuse the model's


def test_load_of_a_dense_model(tmp_path) -> None:
    make("ppo").save(tmp_path / "dense")
    with pytest.raises(PruneError, match="holds no tdmpc_prune state.*ALGO.load"):
        load(tmp_path / "dense.zip")
