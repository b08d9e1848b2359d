"""`attach()`: one call that wires a `Pruner` to a TD-MPC2 agent or world model (`TDMPC2Adapter`).

Works on our agent and on any world model with the official tdmpc2 layout: `_encoder`
(ModuleDict by observation type), `_dynamics`, `_reward`, `_termination` (episodic), `_pi`, `_Qs`
(a vmapped ensemble: our `StackedEnsemble` or tensordict `from_modules`), `_detach_Qs` (sharing
storage) and `_target_Qs` (a copy), `_task_emb` (multitask), and methods
`encode(obs, task)`, `next(z, a, task)`, `reward(z, a, task)`, `Q(z, a, task, return_type)`.

The latent is one **coupling** group (encoder output, dynamics input and output, reward/Q/policy
inputs, pruned in whole SimNorm simplices); each hidden width is a **component** group (one width
shared by all Q members); action, bin and observation dims are never pruned.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..adapter import Adapter, Mirror
from ..config import PruneConfig
from ..errors import PruneError
from ..pruner import Pruner
from ..timing import Timing, time_calls
from ..tracing import ensemble_template, is_ensemble
from .config import WIDTH_KEYS

# component name -> world-model attribute (in the order they are reported)
COMPONENT_ATTRS: Tuple[Tuple[str, str], ...] = (
    ("encoder", "_encoder"),
    ("dynamics", "_dynamics"),
    ("reward", "_reward"),
    ("termination", "_termination"),
    ("Q", "_Qs"),
    ("policy", "_pi"),
    ("task_embedding", "_task_emb"),
)
REQUIRED = ("_encoder", "_dynamics", "_reward", "_pi", "_Qs")


def world_model_of(agent_or_model: nn.Module) -> nn.Module:
    """The world model of an agent (`agent.model`), or the argument itself."""
    wm = getattr(agent_or_model, "model", agent_or_model)
    missing = [a for a in REQUIRED if getattr(wm, a, None) is None]
    if missing:
        raise PruneError(
            f"{type(wm).__name__} does not have the TD-MPC2 world-model layout (missing {', '.join(missing)}); "
            "pass a TD-MPC2 agent (with .model) or its WorldModel"
        )
    return wm


def components(wm: nn.Module) -> Dict[str, str]:
    return {name: attr for name, attr in COMPONENT_ATTRS if isinstance(getattr(wm, attr, None), nn.Module)}


def _multitask(wm: nn.Module) -> bool:
    return bool(getattr(getattr(wm, "cfg", None), "multitask", False))


def _with_task(wm: nn.Module, z: torch.Tensor, task: Optional[torch.Tensor]) -> torch.Tensor:
    return wm.task_emb(z, task) if _multitask(wm) else z


def _first_linear(module: nn.Module) -> nn.Linear:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            return m
    raise PruneError("the encoder has no Linear layer; only state (vector) observations are supported")


def example_inputs(wm: nn.Module, batch: int = 4, horizon: int = 2) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """(obs, actions[horizon], task) shaped for the world model; only shapes matter."""
    cfg = wm.cfg
    key = getattr(cfg, "obs", "state")
    encoder = wm._encoder[key] if isinstance(wm._encoder, nn.ModuleDict) else wm._encoder
    lin = _first_linear(encoder)
    device = lin.weight.device
    task_dim = int(wm._task_emb.embedding_dim) if _multitask(wm) else 0
    g = torch.Generator().manual_seed(0)  # the global RNG stays untouched: attaching must not shift a run's randomness
    obs = torch.randn(batch, lin.in_features - task_dim, generator=g).to(device)
    actions = (torch.rand(horizon, batch, int(cfg.action_dim), generator=g) * 2 - 1).to(device)
    task = torch.zeros(batch, dtype=torch.long, device=device) if _multitask(wm) else None
    return obs, actions, task


def rollout(wm: nn.Module, inputs: Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]) -> List[torch.Tensor]:
    """A latent rollout over the given actions returning every head's raw output.

    The latent written by the dynamics is read again at the next step, so the trace sees that the
    dynamics output *is* the latent. Heads are returned raw (before two-hot decoding, squashing).
    """
    obs, actions, task = inputs
    z = wm.encode(obs, task)
    termination = getattr(wm, "_termination", None)
    outs: List[torch.Tensor] = []
    for a in actions:
        outs.append(wm.reward(z, a, task))
        outs.append(wm.Q(z, a, task, return_type="all"))
        outs.append(wm._pi(_with_task(wm, z, task)))
        if isinstance(termination, nn.Module):
            outs.append(termination(_with_task(wm, z, task)))
        z = wm.next(z, a, task)
    outs.append(wm._pi(_with_task(wm, z, task)))
    return outs


def hidden_widths(wm: nn.Module) -> Dict[str, List[int]]:
    """Current hidden widths of every component (Linear outputs except the last)."""
    out: Dict[str, List[int]] = {}
    for name, attr in COMPONENT_ATTRS:
        mod = getattr(wm, attr, None)
        if not isinstance(mod, nn.Module) or isinstance(mod, nn.Embedding):
            continue
        if isinstance(mod, nn.ModuleDict):
            mod = mod[getattr(wm.cfg, "obs", "state")]
        if is_ensemble(mod):
            mod = ensemble_template(mod)
        linears = [m for m in mod.modules() if isinstance(m, nn.Linear)]
        out[name] = [int(m.out_features) for m in linears[:-1]]
    return out


def sync_config(agent_or_model: nn.Module, wm: nn.Module) -> None:
    """Write the pruned widths back into the config so a checkpoint rebuilds the pruned shape."""
    cfgs = {id(c): c for c in (getattr(agent_or_model, "cfg", None), getattr(wm, "cfg", None)) if c is not None}
    widths = hidden_widths(wm)
    latent = int(wm._dynamics[-1].out_features) if isinstance(wm._dynamics, nn.Sequential) else None
    for cfg in cfgs.values():
        if latent is not None and hasattr(cfg, "latent_dim"):
            cfg.latent_dim = latent
        if isinstance(getattr(wm, "_task_emb", None), nn.Embedding) and hasattr(cfg, "task_dim"):
            cfg.task_dim = int(wm._task_emb.embedding_dim)
        for comp, key in WIDTH_KEYS.items():
            if comp in widths and hasattr(cfg, key):
                setattr(cfg, key, list(widths[comp]))
        mlp = {w for comp in ("dynamics", "reward", "policy", "Q") for w in widths.get(comp, [])}
        if len(mlp) == 1 and hasattr(cfg, "mlp_dim"):  # the official config has one width for all MLPs
            cfg.mlp_dim = mlp.pop()
        enc = set(widths.get("encoder", []))
        if len(enc) == 1 and hasattr(cfg, "enc_dim"):
            cfg.enc_dim = enc.pop()


def recompile(agent_or_model: nn.Module) -> None:
    """Make compiled callables re-trace for the new shapes."""
    if hasattr(agent_or_model, "recompile"):
        agent_or_model.recompile()
    elif getattr(getattr(agent_or_model, "cfg", None), "compile", False):
        torch.compiler.reset()
        if hasattr(agent_or_model, "_plan_val"):  # the official agent caches its compiled planner
            agent_or_model._plan_val = None


class TDMPC2Adapter(Adapter):
    """The adapter contract for a TD-MPC2 agent (ours or the official one) or its world model."""

    def __init__(self, agent_or_model: nn.Module, optimizers: Optional[Sequence[torch.optim.Optimizer]] = None,
                 latency_repeats: int = 5):
        self.agent = agent_or_model
        self.wm = world_model_of(agent_or_model)
        self._optimizers = list(optimizers) if optimizers is not None else None
        self.latency_repeats = latency_repeats

    def model(self) -> nn.Module:
        return self.wm

    def components(self) -> Dict[str, str]:
        return components(self.wm)

    def forward(self, model: nn.Module, inputs: Any) -> List[torch.Tensor]:
        return rollout(model, inputs)

    def example_inputs(self) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        return example_inputs(self.wm)

    def optimizers(self) -> List[torch.optim.Optimizer]:
        """`agent.optim` and `agent.pi_optim` unless given."""
        if self._optimizers is not None:
            return list(self._optimizers)
        return [o for o in (getattr(self.agent, "optim", None), getattr(self.agent, "pi_optim", None)) if o is not None]

    def mirrors(self) -> List[Mirror]:
        """Detached and target Q copies: found implicitly for our layout, registered here for the official one."""
        out = []
        for attr, shared in (("_detach_Qs", True), ("_target_Qs", False)):
            mirror = getattr(self.wm, attr, None)
            if isinstance(mirror, nn.Module):
                out.append(Mirror(self.wm._Qs, mirror, shared))
        return out

    def after_surgery(self, pruner: Pruner) -> None:
        sync_config(self.agent, self.wm)
        recompile(self.agent)

    def act_latency_ms(self) -> Optional[float]:
        """Median time of one MPPI plan of our agent (`agent.act`); else of the traced rollout."""
        if not hasattr(self.agent, "act") or not hasattr(self.agent, "planner"):
            return super().act_latency_ms()
        return plan_latency_ms(self.agent, self.latency_repeats)


@torch.no_grad()
def time_act(agent: Any, obs: torch.Tensor, eval_mode: bool = True, repeats: int = 1) -> Timing:
    """Times of `repeats` calls of `agent.act` (MPPI planning), CUDA synchronised around each."""
    return time_calls(lambda: agent.act(obs, t0=False, eval_mode=eval_mode), agent.device, repeats)


@torch.no_grad()
def plan_latency_ms(agent: Any, repeats: int = 5) -> float:
    """Median `agent.act` time in ms (thread CPU time on one CPU thread, else wall), leaving the
    global RNG and the planner's warm start untouched."""
    obs = torch.zeros(agent.cfg.obs_dim, device=agent.device)
    saved = agent.planner.prev_mean.clone()
    with torch.random.fork_rng(devices=[agent.device] if agent.device.type == "cuda" else []):
        time_act(agent, obs)  # the first call warms caches up
        ms = time_act(agent, obs, repeats=repeats).ms
    agent.planner.prev_mean.copy_(saved)
    return ms


def attach(
    agent_or_model: nn.Module,
    optimizers: Optional[Sequence[torch.optim.Optimizer]] = None,
    total_steps: Optional[int] = None,
    config: Optional[PruneConfig] = None,
    first_step: int = 0,
    **options: Any,
) -> Pruner:
    """Build the `Pruner` for a TD-MPC2 agent (or world model) and wire it to the agent's optimizers.

    `optimizers` default to `agent.optim` and `agent.pi_optim`; `total_steps` is the length of the
    run in the units of the clock you pass to `pruner.step()`, `first_step` the step where updates
    begin (after the seed steps): fractional `start`/`end` are fractions of [first_step, total_steps]. Call after moving the model to its
    device (the official `WorldModel.to()` recreates its Q copies). `TDMPC2Adapter` is the same
    wiring as an `Adapter` (for `PruneDriver`).
    """
    adapter = TDMPC2Adapter(agent_or_model, optimizers)
    pruner = adapter.build(config, **options)
    if adapter.optimizers():
        adapter.attach(pruner, total_steps=total_steps, first_step=first_step)
    return pruner
