"""Deployment: ONNX export of a pruned TD-MPC2 run (`tdmpc-prune export`) and of SB3 policies, run with onnxruntime."""
from __future__ import annotations

import json
import os

import gymnasium as gym
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from stable_baselines3 import PPO

from tdmpc_prune import deploy
from tdmpc_prune.cli import main
from tdmpc_prune.errors import ExportError
from tdmpc_prune.sb3 import export, get_pruner, wrap
from tdmpc_prune.tdmpc2 import TDMPC2, make_config
from tdmpc_prune.tdmpc2.bench import plan_work
from tdmpc_prune.tdmpc2.deploy import GRAPHS, MANIFEST, ExportWorldModel, PlannerGraph, export_agent, load_run, stacked_mlp
from tdmpc_prune.tdmpc2.planner import PlanNoise
from tdmpc_prune.tdmpc2.runtime import OrtController
from tdmpc_prune.tdmpc2.train import train
from test_sb3 import SCHEDULE, SpaceEnv, make
from test_tdmpc2_train import tokens

# a mask-mode pruning run (the export removes the masked channels) with three critics (critic draws matter).
# every_n_updates=1 keeps the model this test was written on: a plan is a discontinuous function of the
# values (the elite sort, the Gumbel choice), and the run observed every 4th update trains a model whose
# plan at its second step has an elite-boundary near-tie (the 8th and 9th values 1.5e-7 apart, measured)
# that ORT's and torch's kernels break apart (the action then differs by 4e-3)
PRUNE = ["num_q=3", "iterations=2", "--prune", "prune.schedule=iterative", "prune.start=55", "prune.end=85",
         "prune.iterations=2", "prune.sparsity=0.5", "prune.physical=false", "prune.l1=0", "prune.every_n_updates=1"]


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("runs")
    return train(tokens(logdir, "pruned", 100, 100, 100, *PRUNE)).directory


def _ort(path: str) -> ort.InferenceSession:
    return ort.InferenceSession(path, providers=["CPUExecutionProvider"])


def test_export_a_pruned_run_and_plan_with_onnxruntime(pruned_run, tmp_path, capsys):
    out = str(tmp_path / "deploy")
    assert main(["export", pruned_run, "--out", out]) == 0
    assert "exported 7 graphs" in capsys.readouterr().out
    manifest = json.load(open(os.path.join(out, MANIFEST)))
    assert set(manifest["graphs"]) == set(GRAPHS) and all(g["max_abs_diff"] <= 1e-5 for g in manifest["graphs"].values())
    assert sorted(os.listdir(out)) == sorted([MANIFEST] + [f"{n}.onnx" for n in GRAPHS])  # no staging left behind
    assert "critic_draws" in manifest["graphs"]["planner"]["inputs"] and "critic_draws" in manifest["graphs"]["q"]["inputs"]

    agent = load_run(pruned_run)  # rebuilt as resume=true does, masked channels removed
    wm = agent.model
    assert wm._dynamics[0].out_features == 16 and wm._Qs.tensor_dict()["0.weight"].shape[:2] == (3, 16)
    assert manifest["params"] == wm.total_params and manifest["widths"]["dynamics"] == [16, 16]

    g = torch.Generator().manual_seed(3)
    obs = torch.randn(6, agent.cfg.obs_dim, generator=g)
    with torch.no_grad():
        z = wm.encode(obs)
        a = torch.rand(6, agent.cfg.action_dim, generator=g) * 2 - 1
        expected = {"policy": wm.pi(z)[1]["mean"], "encode": z, "next": wm.next(z, a)}
    got = {
        "policy": _ort(os.path.join(out, "policy.onnx")).run(None, {"obs": obs.numpy()})[0],
        "encode": _ort(os.path.join(out, "encode.onnx")).run(None, {"obs": obs.numpy()})[0],
        "next": _ort(os.path.join(out, "next.onnx")).run(None, {"z": z.numpy(), "action": a.numpy()})[0],
    }
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k].numpy(), atol=1e-5, rtol=0, err_msg=k)

    # a few steps of an episode: ONNX Runtime alone (numpy noise) == the agent's planner fed the same noise
    ctrl = OrtController(out, seed=0)
    for t in range(3):
        o = np.random.default_rng(t).normal(size=agent.cfg.obs_dim).astype(np.float32)
        noise = OrtController.noise(ctrl, eval_mode=False)  # fresh numpy draws ...
        ctrl.noise = lambda eval_mode=False, n=noise: n  # ... which the controller uses and we hand to torch
        action = ctrl.act(o, t0=t == 0)
        ref = agent.planner.plan(wm, torch.as_tensor(o)[None], t0=t == 0, discount=agent.discount,
                                 noise=PlanNoise(**{k: torch.as_tensor(v) for k, v in noise.items()}))
        np.testing.assert_allclose(action, ref.numpy(), atol=1e-5, rtol=0)
        np.testing.assert_allclose(ctrl.prev_mean, agent.planner.prev_mean.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(ctrl.policy(obs.numpy()), expected["policy"].numpy(), atol=1e-5, rtol=0)


def test_stacked_mlp_equals_the_vmapped_ensemble():
    cfg = make_config(model_size="cpu", obs_dim=5, action_dim=2, num_q=4, enc_dim=32, mlp_dim=32, latent_dim=16)
    wm = TDMPC2(cfg).model
    for p in wm._Qs.parameters():
        p.data.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(3, 7, 18)
    with torch.no_grad():
        full = wm._Qs(x)
        torch.testing.assert_close(stacked_mlp(wm._Qs, x), full, atol=1e-6, rtol=0)
        torch.testing.assert_close(stacked_mlp(wm._Qs, x, torch.tensor([3, 1])), full[[3, 1]], atol=1e-6, rtol=0)


def test_untrained_agent_exports_despite_tied_values(tmp_path):
    """Zero-initialised reward/Q heads make every sample's value equal: elites are then taken in index order."""
    cfg = make_config(model_size="cpu", obs_dim=4, action_dim=2, enc_dim=32, mlp_dim=32, latent_dim=16, num_samples=32,
                      num_elites=8, num_pi_trajs=4, iterations=2)
    agent = TDMPC2(cfg)
    manifest = export_agent(agent, str(tmp_path), only=["planner", "q"], num_samples=24)
    assert manifest["num_samples"] == 24 and manifest["graphs"]["planner"]["max_abs_diff"] <= 1e-5
    assert "critic_draws" not in manifest["graphs"]["q"]["inputs"]  # two critics: the whole ensemble, no draws read
    path = str(tmp_path / "planner.onnx")
    assert not [n for n in onnx.load(path).graph.node if n.op_type == "CastLike"]  # constants typed at export

    # the profiler sees every kernel of the plan: the matrix products of all heads, LayerNorms, ...
    ctrl = OrtController(str(tmp_path), seed=0)
    nodes = deploy.profile(path, {"obs": np.zeros((1, 4), np.float32), "prev_mean": ctrl.prev_mean, **ctrl.noise()}, runs=2)
    ops = {v["op"] for v in nodes.values()}
    assert {"Gemm", "LayerNormalization", "TopK"} <= ops and all(v["us"] >= 0 for v in nodes.values())

    # the exported planner computes what the agent's planner computes (same FLOP counter on both)
    planner = PlannerGraph(ExportWorldModel(agent.model), agent.planner, agent.discount)
    noise = agent.planner.draw_noise(len(agent.model._Qs), "cpu")
    obs = torch.randn(4)
    exported = plan_work(agent, obs, lambda: planner(obs[None], torch.zeros(cfg.horizon, 2), *noise))
    own = plan_work(agent, obs)
    assert exported["matmul_flops"] == own["matmul_flops"] > 0 and own["other_elements"] > 0


def test_bad_input_gives_one_clear_error(pruned_run, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", str(empty), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "has no checkpoint.pt" in err and "tdmpc-prune train" in err and not (tmp_path / "o").exists()
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    assert main(["export", pruned_run, "--out", str(blocker)]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err and blocker.read_text() == "keep me"
    assert main(["export", pruned_run, "--out", "/proc/no/such/dir"]) == 2
    assert "cannot write to output directory" in capsys.readouterr().err
    dict_env = SpaceEnv(gym.spaces.Dict({"x": gym.spaces.Box(-1, 1, (3,))}), gym.spaces.Discrete(2))
    with pytest.raises(ExportError, match="observation space Dict.*FlattenObservation"):
        export(PPO("MultiInputPolicy", dict_env, n_steps=8, batch_size=8, device="cpu"), tmp_path / "dict.onnx")
    multi = SpaceEnv(gym.spaces.Box(-1, 1, (3,)), gym.spaces.MultiDiscrete([2, 3]))
    with pytest.raises(ExportError, match="cannot export.*MultiDiscrete"):
        export(PPO("MlpPolicy", multi, n_steps=8, batch_size=8, device="cpu"), tmp_path / "multi.onnx")
    assert not (tmp_path / "multi.onnx").exists()
    with pytest.raises(ExportError, match="is a directory"):
        export(make("dqn"), tmp_path)


@pytest.mark.parametrize("name", ["ppo", "a2c", "sac", "td3", "dqn"])
def test_sb3_export_matches_predict(name, tmp_path):
    """Stock models export (SAC/TD3: the actor, actions rescaled to the Box); a pruned PPO too."""
    model = make(name)
    if name == "ppo":
        model = wrap(model, criterion="magnitude", **SCHEDULE)
        model.learn(320)
        assert get_pruner(model).sparsity() > 0.4
    info = export(model, tmp_path / name)
    assert info["path"].endswith(".onnx") and info["max_abs_diff"] <= 1e-5
    obs = np.random.default_rng(5).uniform(-2, 2, size=(9, *model.observation_space.shape)).astype(np.float32)
    got = _ort(info["path"]).run(None, {"obs": obs})[0]
    expected = model.predict(obs, deterministic=True)[0]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
