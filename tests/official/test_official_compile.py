"""The official `_update` under torch.compile (inductor, as the launcher compiles it) against eager.

The pruner's optimizer step pre-hooks (statistics, EMA, group lasso) run inside the compiled update.
Two official agents from one seed see the same batches: one eager, one compiled by the launcher's
`compile_update_without_cuda_graphs`. Their losses, the pruner's statistics and the weights agree;
a pruning event costs at most one re-compilation of the update, and both agents remove the same channels.
"""
from __future__ import annotations

import types

import pytest
import torch

from plugin_launcher import load_launcher
from tdmpc_prune.tdmpc2 import attach

# horizon 1 and a small ensemble keep inductor's compile time on one CPU thread to about a minute;
# num_q=3: torch 2.13's inductor fails on the official `torch.randperm(num_q)[:2]` when num_q == 2
COMPILE_SMALL = ("horizon=1", "num_q=3", "compile=false")


def _agent(official, compiled: bool):
    torch.manual_seed(0)
    cfg = official.cfg(*COMPILE_SMALL)
    agent = official.agent(cfg)
    pruner = attach(agent, total_steps=8, criterion="bayes", sparsity=0.5, iterations=1, start=4, end=4,
                    l1=1e-3, l1_period=4, observe=["all"])
    if compiled:
        load_launcher().compile_update_without_cuda_graphs(agent)
        agent.cfg.compile = True  # as under compile=true: a pruning event resets the compiled update
    return agent, pruner


def _batches(cfg, n: int):
    g = torch.Generator().manual_seed(1)
    h, b = cfg.horizon, cfg.batch_size
    for _ in range(n):
        yield (torch.randn(h + 1, b, *cfg.obs_shape["state"], generator=g), torch.rand(h, b, cfg.action_dim, generator=g) * 2 - 1,
               torch.randn(h, b, 1, generator=g), torch.zeros(h, b, 1))


def _frames() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def test_compiled_official_update_matches_eager(official, monkeypatch) -> None:
    # inductor's own RNG differs from eager's: with this flag its random ops (the official Q subset
    # `randperm(num_q)[:2]`) draw from the eager generator, seeded alike before each agent's update
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    torch._dynamo.reset()
    eager, p_eager = _agent(official, compiled=False)
    comp, p_comp = _agent(official, compiled=True)
    graphs = []
    for step, batch in enumerate(_batches(eager.cfg, 8), start=1):
        before = _frames()
        torch.manual_seed(step)
        info_e = eager._update(*batch)
        torch.manual_seed(step)
        info_c = comp._update(*batch)
        graphs.append(_frames() - before)
        for k in info_e:
            torch.testing.assert_close(info_c[k], info_e[k], rtol=1e-4, atol=1e-5, msg=lambda m, k=k: f"{k} at update {step}: {m}")
        for pr in (p_eager, p_comp):
            pr.step(step)
        sd_e, sd_c = p_eager.stats.state_dict(), p_comp.stats.state_dict()
        for k in sd_e:
            torch.testing.assert_close(sd_c[k], sd_e[k], rtol=1e-3, atol=1e-10, msg=lambda m, k=k: f"statistic {k} at update {step}: {m}")
    assert p_eager.history and [e["removed"] for e in p_comp.history] == [e["removed"] for e in p_eager.history]
    for (name, w_e), (_, w_c) in zip(eager.model.named_parameters(), comp.model.named_parameters()):
        assert w_e.shape == w_c.shape, name
        torch.testing.assert_close(w_c, w_e, rtol=1e-3, atol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    first = graphs[0]
    assert first >= 1
    if any(graphs[1:4]) or sum(graphs[4:]) > first:
        # measured at 14ff59d on CPU: 24 graphs at the first update (graph breaks at the pruner's optimizer
        # hooks) and new graphs at the following updates before any event: correct, but not yet
        # "compiled once, re-compiled at most once per pruning event"
        pytest.xfail(f"known: the compiled update re-compiles while a pruner is attached (new graphs per update: {graphs})")
