"""The pruner's optimizer hooks under torch.compile of a whole training step (any PyTorch loop).

The step pre-/post-hooks (statistics, group-lasso shrink, masks) keep Python state that changes
every step; they run outside the compiled region (`torch.compiler.disable`), so a compiled training
step is traced once, never again between pruning events, and at most once more per event (new
shapes), while its statistics and weights match the same loop run eagerly. dynamo's `eager` backend
keeps this to seconds (the guards and graph breaks are dynamo's; inductor on the official
TD-MPC2 update is tested in tests/official/test_official_compile.py).
"""
from __future__ import annotations

from typing import Callable, List, Tuple

import torch
import torch.nn as nn

from tdmpc_prune import Pruner

STEPS, EVENT = 8, 4


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _setup(compiled: bool) -> Tuple[nn.Module, Pruner, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    pruner = Pruner(model, components={"model": ""}, example_inputs=(torch.randn(4, 6),), criterion="bayes",
                    observe=["all"], sparsity=0.5, schedule="oneshot", start=EVENT, end=EVENT, l1=1e-2, l1_period=4)
    pruner.attach(opt, total_steps=STEPS)

    def train_step(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()

    return model, pruner, (torch.compile(train_step, backend="eager") if compiled else train_step)


def test_compiled_training_step_compiles_once_per_structure_and_matches_eager() -> None:
    torch._dynamo.reset()
    eager, p_eager, step_eager = _setup(compiled=False)
    comp, p_comp, step_comp = _setup(compiled=True)
    g = torch.Generator().manual_seed(1)
    graphs: List[int] = []
    for step in range(1, STEPS + 1):
        x, y = torch.randn(16, 6, generator=g), torch.randn(16, 2, generator=g)
        before = _graphs()
        loss_c = step_comp(x, y)
        graphs.append(_graphs() - before)
        torch.testing.assert_close(loss_c, step_eager(x, y), msg=lambda m: f"loss at step {step}: {m}")
        for pr in (p_eager, p_comp):
            pr.step(step)
        sd_e, sd_c = p_eager.stats.state_dict(), p_comp.stats.state_dict()
        for k in sd_e:
            torch.testing.assert_close(sd_c[k], sd_e[k], msg=lambda m, k=k: f"statistic {k} at step {step}: {m}")
    assert [e["removed"] for e in p_comp.history] == [e["removed"] for e in p_eager.history] and p_eager.history
    for (name, w_e), (_, w_c) in zip(eager.named_parameters(), comp.named_parameters()):
        torch.testing.assert_close(w_c, w_e, msg=lambda m, name=name: f"{name}: {m}")
    assert p_comp.param_count() < p_comp.dense_params
    # traced at the first step only; the event (after step EVENT) re-traces once for the new shapes
    first, after_event = graphs[0], graphs[EVENT]
    assert first >= 1 and 1 <= after_event <= first, graphs
    assert not any(graphs[1:EVENT]) and not any(graphs[EVENT + 1:]), graphs
