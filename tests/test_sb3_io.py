"""Save/load of pruned SB3 models: stock `model.save()` + `ALGO.load()`, `tdmpc_prune.sb3.load()`, continuing."""
from __future__ import annotations

import pytest
import torch as th
from stable_baselines3 import A2C, DQN, PPO, SAC, TD3
from stable_baselines3.common.save_util import load_from_zip_file

from tdmpc_prune.sb3 import PruningCallback, PruningState, get_pruner, load, wrap
from test_sb3 import SCHEDULE, STEPS, TOL, assert_sb3_consistent, heads, make, obs_batch

th.set_num_threads(1)


def assert_same_heads(a, b) -> None:
    obs = obs_batch(a)
    ha, hb = heads(a, obs), heads(b, obs)
    assert set(ha) == set(hb)
    for key in ha:
        assert ha[key].shape == hb[key].shape, key
        assert (ha[key] - hb[key]).abs().max().item() <= TOL, key


def test_stock_save_and_load_keep_predictions(tmp_path) -> None:
    model = wrap(make("ppo"), criterion="fisher", **SCHEDULE)
    model.learn(STEPS)
    assert model.policy_kwargs["net_arch"] == {"pi": [16, 12], "vf": [16, 12]}
    model.save(tmp_path / "ppo")
    stock = PPO.load(tmp_path / "ppo.zip", device="cpu")
    assert type(stock) is PPO
    assert_same_heads(model, stock)
    ours = load(tmp_path / "ppo.zip", device="cpu")
    assert isinstance(ours, PPO)
    assert_same_heads(model, ours)
    assert get_pruner(ours).history == get_pruner(model).history
    # what the zip holds is the pruner's state, not live objects
    data, _, _ = load_from_zip_file(tmp_path / "ppo.zip")
    state = data["tdmpc_prune"]
    assert isinstance(state, PruningState) and state.pruner is None
    assert state.saved["history"] == get_pruner(model).history
    assert state.policy_kwargs["net_arch"] == [32, 24]  # the unpruned architecture, for rebuilding


@pytest.mark.parametrize("algo,cls", [("a2c", A2C), ("sac", SAC), ("td3", TD3), ("dqn", DQN)])
def test_stock_save_and_load_for_every_algorithm(tmp_path, algo: str, cls) -> None:
    model = wrap(make(algo), criterion="bayes", **SCHEDULE)
    model.learn(STEPS)
    assert get_pruner(model).sparsity() == pytest.approx(0.5, abs=0.02)
    model.save(tmp_path / algo)
    stock = cls.load(tmp_path / f"{algo}.zip", env=model.get_env(), device="cpu")
    assert type(stock) is cls
    assert_same_heads(model, stock)  # pruned widths came back from the net_arch written into policy_kwargs
    stock.learn(64, reset_num_timesteps=False)  # and it keeps training as a plain SB3 model
    assert_sb3_consistent(stock)


@pytest.mark.parametrize("reloader", ["tdmpc_prune.sb3.load", "PPO.load+PruningCallback"])
def test_continue_after_reload_keeps_the_schedule(tmp_path, reloader: str) -> None:
    opts = dict(SCHEDULE, start=0.2, end=0.8, iterations=4, total_timesteps=STEPS)
    model = wrap(make("ppo"), criterion="bayes", **opts)
    model.learn(192)  # events at 115, 166, 218, 269 (the span starts after the first 64-step rollout)
    first = get_pruner(model).history
    assert get_pruner(model).schedule.done == 2 and get_pruner(model).sparsity() < 0.5
    model.save(tmp_path / "half")
    env = model.get_env()
    if reloader == "tdmpc_prune.sb3.load":
        again = load(tmp_path / "half.zip", env=env, device="cpu")
        assert_same_heads(model, again)
        again.learn(STEPS - 192, reset_num_timesteps=False)
    else:
        again = PPO.load(tmp_path / "half.zip", env=env, device="cpu")
        assert_same_heads(model, again)  # stock load rebuilt the pruned widths from net_arch
        get_pruner(again)  # restores the pruner: unpruned policy, history replayed, weights put back
        assert_same_heads(model, again)
        again.learn(STEPS - 192, callback=PruningCallback(heatmap=False), reset_num_timesteps=False)
    pruner = get_pruner(again)
    assert pruner.history[:2] == first
    assert pruner.schedule.done == 4 and pruner.history[-1]["clock"] > 192
    assert pruner.sparsity() == pytest.approx(0.5, abs=0.02)
    assert pruner.total_steps == STEPS
    assert_sb3_consistent(again)


def test_uneven_critics_need_the_rebuilding_load(tmp_path) -> None:
    """Critics pruned to different widths: one `qf` net_arch cannot say it, `load()` replays the history."""
    model = wrap(make("sac"), criterion="bayes", budgets={"qf0": 0.25, "qf1": 0.5}, **SCHEDULE)
    with pytest.warns(UserWarning, match="tdmpc_prune.sb3.load"):
        model.learn(STEPS)
    assert model.policy_kwargs["net_arch"] == [32, 24]  # left as built, so nobody is misled
    model.save(tmp_path / "sac")
    with pytest.raises(RuntimeError, match="size mismatch"):
        SAC.load(tmp_path / "sac.zip", device="cpu")
    again = load(tmp_path / "sac.zip", env=model.get_env(), device="cpu")
    assert_same_heads(model, again)
    assert_sb3_consistent(again)
    again.learn(64, reset_num_timesteps=False)  # polyak updates, both optimizers, sliced targets
    assert_sb3_consistent(again)


def test_mask_mode_masks_survive_reload(tmp_path) -> None:
    model = wrap(make("dqn"), criterion="magnitude", physical=False, **SCHEDULE)
    model.learn(STEPS)
    model.save(tmp_path / "dqn")
    again = load(tmp_path / "dqn.zip", env=model.get_env(), device="cpu")
    assert type(again).__mro__[1] is DQN
    assert_same_heads(model, again)
    again.learn(96, reset_num_timesteps=False)  # masks are re-applied after every optimizer step
    pruner = get_pruner(again)
    for g in pruner.groups:
        dead = ~pruner.alive[g.id]
        assert int(dead.sum()) == g.channels // 2
        for net in (again.policy.q_net, again.policy.q_net_target):
            layer = net.get_submodule(g.id.split(".", 1)[1])
            assert layer.weight[dead].abs().max().item() == 0.0
