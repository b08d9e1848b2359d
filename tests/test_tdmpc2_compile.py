"""`compile=true`: pruning rebuilds what was compiled (the update and the planner) for the new shapes.

`torch.compile` and `torch.compiler.reset` are replaced by recorders: every compiled callable is a
wrapper that logs its calls, so the tests see what was compiled, when the caches were cleared and
which compiled callable actually ran -- without paying for dynamo on a CPU test machine.
"""
from __future__ import annotations

from typing import Any, Callable, List

import pytest
import torch

from tdmpc_prune.tdmpc2 import TDMPC2, ReplayBuffer, make_config
from tdmpc_prune.tdmpc2 import attach
from official_layout import OfficialInitWorldModel, official_cfg
from test_tdmpc2_agent import filled_buffer

OBS, ACT = 5, 2
TINY = dict(model_size="cpu", enc_dim=32, mlp_dim=48, latent_dim=32, obs_dim=OBS, action_dim=ACT, device="cpu",
            batch_size=8, num_samples=32, num_elites=4, num_pi_trajs=4, iterations=2, num_q=3, compile=True)


class CompileRecorder:
    """Stands in for `torch.compile` / `torch.compiler.reset`; `events` is the log of both and of calls."""

    def __init__(self) -> None:
        self.compiled: List[Callable] = []  # the functions handed to torch.compile, in order
        self.wrappers: List[Callable] = []  # what torch.compile returned for each
        self.events: List[Any] = []  # "reset", ("compile", i), ("call", i)

    def compile(self, fn: Callable, *args: Any, **kwargs: Any) -> Callable:
        assert not args, args
        # default mode: CUDA graphs ("reduce-overhead", "max-autotune") need static inputs the agent does not keep
        assert kwargs.get("mode") in (None, "default"), kwargs
        i = len(self.compiled)

        def compiled(*a: Any, **k: Any) -> Any:
            self.events.append(("call", i))
            return fn(*a, **k)

        self.compiled.append(fn)
        self.wrappers.append(compiled)
        self.events.append(("compile", i))
        return compiled

    def reset(self) -> None:
        self.events.append("reset")

    def since(self, n: int) -> List[Any]:
        return self.events[n:]


@pytest.fixture
def recorder(monkeypatch) -> CompileRecorder:
    rec = CompileRecorder()
    monkeypatch.setattr(torch, "compile", rec.compile)
    monkeypatch.setattr(torch.compiler, "reset", rec.reset)
    monkeypatch.setattr(torch._dynamo, "reset", rec.reset)
    return rec


def _compiled_pair(rec: CompileRecorder, agent: TDMPC2, first: int) -> None:
    """Compiled callables `first`, `first + 1` are this agent's update and planner, and the agent uses them."""
    assert rec.compiled[first:first + 2] == [agent._update, agent.planner.plan]  # bound methods of *this* agent
    assert agent._update_fn is rec.wrappers[first] and agent._plan_fn is rec.wrappers[first + 1]


def _trains_and_plans(rec: CompileRecorder, agent: TDMPC2, buf: ReplayBuffer, update_id: int, plan_id: int) -> None:
    before = {n: p.detach().clone() for n, p in agent.model.named_parameters()}
    start = len(rec.events)
    info = agent.update(buf)
    action = agent.act(torch.randn(OBS), t0=True)
    assert rec.since(start) == [("call", update_id), ("call", plan_id)]  # through the newest compiled callables only
    assert all(torch.isfinite(v).all() for v in info.values()), info
    assert action.shape == (ACT,) and action.abs().max() <= 1
    params = dict(agent.model.named_parameters())
    changed = [n for n, p in params.items() if p.shape == before[n].shape and not torch.equal(p, before[n])]
    assert len(changed) > len(before) // 2  # the update trained the (pruned) model
    for opt in (agent.optim, agent.pi_optim):
        for group in opt.param_groups:
            for p in group["params"]:
                assert opt.state[p]["exp_avg"].shape == p.shape


def test_pruning_rebuilds_what_was_compiled(recorder) -> None:
    rec = recorder
    torch.manual_seed(0)
    agent = TDMPC2(make_config(**TINY))
    assert rec.events == ["reset", ("compile", 0), ("compile", 1)]
    _compiled_pair(rec, agent, 0)
    buf = filled_buffer(agent.cfg)
    _trains_and_plans(rec, agent, buf, 0, 1)

    pruner = attach(agent, criterion="magnitude", sparsity=0.5, coupling="prune")
    for k, (sparsity, latent, mlp) in enumerate([(0.25, 24, 36), (0.5, 16, 24)]):
        start = len(rec.events)
        pruner.prune_to(sparsity)
        m = agent.model
        assert m._encoder["state"][-1].out_features == latent and agent.cfg.latent_dim == latent
        assert m._dynamics[0].out_features == mlp and agent.cfg.q_dims == [mlp, mlp]
        first = 2 * (k + 1)
        # the caches were cleared and the update and the planner compiled again, once each
        assert sorted(rec.since(start), key=str) == sorted(["reset", ("compile", first), ("compile", first + 1)], key=str)
        _compiled_pair(rec, agent, first)
        _trains_and_plans(rec, agent, buf, first, first + 1)
        assert agent.planner.prev_mean.shape == (agent.cfg.horizon, ACT)


def test_without_compile_nothing_is_compiled_or_reset(recorder) -> None:
    rec = recorder
    agent = TDMPC2(make_config(**{**TINY, "compile": False}))
    attach(agent, criterion="magnitude", sparsity=0.25, coupling="prune").prune_to()
    assert rec.events == []  # a reset would throw away other models' compiled code in this process
    assert agent._update_fn == agent._update and agent._plan_fn == agent.planner.plan


class OfficialAgent:
    """What `attach` sees of the official TDMPC2: `cfg`, `model`, the compiled planner cached in `_plan_val`."""

    def __init__(self) -> None:
        self.cfg = official_cfg(compile=True)
        self.model = OfficialInitWorldModel(self.cfg)
        self._plan_val = lambda *a, **k: None


def test_official_agent_drops_its_cached_compiled_planner(recorder) -> None:
    """An agent without `recompile` (the official one): caches cleared and its cached `_plan_val` dropped."""
    rec = recorder
    agent = OfficialAgent()
    pruner = attach(agent, criterion="magnitude", sparsity=0.5, coupling="prune")
    pruner.prune_to(0.25)
    assert rec.events == ["reset"] and agent._plan_val is None
    assert agent.cfg.mlp_dim == 36 and agent.cfg.latent_dim == 24  # the config follows the shapes
    agent._plan_val = lambda *a, **k: None
    pruner.prune_to(0.5)
    assert rec.events == ["reset", "reset"] and agent._plan_val is None  # at every structure change
    agent.cfg.compile = False
    agent._plan_val = cached = lambda *a, **k: None
    pruner.prune_to(0.75)
    assert rec.events == ["reset", "reset"] and agent._plan_val is cached  # not compiled: nothing to rebuild
