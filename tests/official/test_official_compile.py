"""compile=true: the official `_update` under torch.compile (inductor, CPU) against eager, with a pruner attached.

The pruner's statistics and group lasso run in optimizer step pre-hooks, i.e. inside the compiled
update. Compiled and eager runs see the same batches; inductor draws its random numbers like eager
(`fallback_random`), so both must give the same losses and the same statistics, and a pruning
event costs at most one new compilation of the update.
"""
from __future__ import annotations

import time

import pytest
import torch

from tdmpc_prune.tdmpc2 import attach

STEPS, EVENT = 6, 3
# horizon 1 keeps the unrolled graph small; num_q=3 because inductor (torch 2.13) fails on the
# official `torch.randperm(num_q)[:2]` when num_q == 2 ("Not all inputs to pattern found"), with or
# without a pruner
TINY = ("horizon=1", "num_q=3", "batch_size=8")


def _run(official, compiled: bool):
    import torch._dynamo.utils as dynamo_utils

    cfg = official.cfg(*TINY, f"compile={str(compiled).lower()}", obs_dim=5, action_dim=1)
    torch.manual_seed(0)
    agent = official.agent(cfg)
    pruner = attach(agent, total_steps=STEPS, criterion="bayes", sparsity=0.5, schedule="oneshot", start=EVENT,
                    l1=1e-2, l1_period=STEPS)
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(2)
    dynamo_utils.counters.clear()
    losses, graphs = [], []
    for step in range(1, STEPS + 1):
        h, b = cfg.horizon, cfg.batch_size
        batch = (torch.randn(h + 1, b, 5, generator=g), torch.rand(h, b, 1, generator=g) * 2 - 1,
                 torch.randn(h, b, 1, generator=g), torch.zeros(h, b, 1))
        torch.compiler.cudagraph_mark_step_begin()  # as the official agent.update does
        info = agent._update(*batch)
        losses.append(torch.stack([info[k] for k in ("consistency_loss", "reward_loss", "value_loss", "pi_loss")]))
        graphs.append(dynamo_utils.counters["stats"]["unique_graphs"])
        pruner.step(step)
    stats = {k: v.clone() for k, v in pruner.scores().items()}
    return torch.stack(losses), stats, graphs, pruner


def test_inductor_update_matches_eager_statistics_losses_and_recompiles(official, monkeypatch) -> None:
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "fallback_random", True)
    torch.compiler.reset()
    t0 = time.time()
    eager_losses, eager_stats, eager_graphs, eager = _run(official, compiled=False)
    t1 = time.time()
    losses, stats, graphs, pruner = _run(official, compiled=True)
    print(f"eager {t1 - t0:.1f}s, compiled {time.time() - t1:.1f}s, graphs per step {graphs}")
    torch.compiler.reset()
    assert eager_graphs == [0] * STEPS
    assert [h["clock"] for h in pruner.history] == [EVENT] == [h["clock"] for h in eager.history]
    assert pruner.history[0]["removed"] == eager.history[0]["removed"]  # the same channels went
    torch.testing.assert_close(losses, eager_losses, rtol=1e-4, atol=1e-5)
    assert set(stats) == set(eager_stats)
    for gid in stats:
        torch.testing.assert_close(stats[gid], eager_stats[gid], rtol=1e-3, atol=1e-7, equal_nan=True, msg=gid)
    first = graphs[0]
    assert first > 0 and graphs[EVENT - 1] == first  # compiled once, reused until the event
    assert graphs[-1] <= 2 * first  # the pruning event: at most one new compilation of the update
