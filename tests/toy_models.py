"""Small models with the structures the pruner must handle (used by the core tests).

`LatentWorldModel` has the TD-MPC2 shape in miniature: a SimNorm latent written by an encoder and
by a dynamics MLP (fed back through a 2-step rollout) and read, concatenated with actions, by
reward, policy and a vmapped Q-ensemble.  `official_ensemble=True` builds the Q-ensemble the way
the official tdmpc2 does (tensordict `from_modules`, `torch.vmap`, a detached copy sharing storage
and a target clone) instead of our `StackedEnsemble`.
"""
from __future__ import annotations

from copy import deepcopy

import torch
import torch.nn as nn
import torch.nn.functional as F

from tdmpc_prune import StackedEnsemble


COMPONENTS = {"encoder": "_encoder", "dynamics": "_dynamics", "reward": "_reward", "policy": "_pi", "Q": "_Qs"}


class NormedLinear(nn.Linear):
    """Linear -> (Dropout) -> LayerNorm -> act, owning its LayerNorm (tdmpc2 layout)."""

    def __init__(self, i: int, o: int, act: nn.Module | None = None, dropout: float = 0.0):
        super().__init__(i, o)
        self.ln = nn.LayerNorm(o)
        self.act = act if act is not None else nn.Mish()
        self.dropout = nn.Dropout(dropout) if dropout else None

    def forward(self, x):
        x = super().forward(x)
        if self.dropout is not None:
            x = self.dropout(x)
        return self.act(self.ln(x))


class SimNorm(nn.Module):
    def __init__(self, dim: int = 8):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        shp = x.shape
        return F.softmax(x.view(*shp[:-1], -1, self.dim), dim=-1).view(*shp)


def mlp(i: int, hidden: list, o: int, act: nn.Module | None = None, dropout: float = 0.0) -> nn.Sequential:
    dims = [i] + hidden + [o]
    layers = [NormedLinear(dims[k], dims[k + 1], dropout=dropout * (k == 0)) for k in range(len(dims) - 2)]
    layers.append(NormedLinear(dims[-2], dims[-1], act=act) if act is not None else nn.Linear(dims[-2], dims[-1]))
    return nn.Sequential(*layers)


class TensorDictEnsemble(nn.Module):
    """The official tdmpc2 ensemble layout: tensordict `from_modules` params run under `torch.vmap`."""

    def __init__(self, modules):
        super().__init__()
        from tensordict import from_modules

        self.params = from_modules(*modules, as_module=True)
        with self.params[0].data.to("meta").to_module(modules[0]):
            self.module = deepcopy(modules[0])
        self._n = len(modules)

    def _call(self, params, *args):
        with params.to_module(self.module):
            return self.module(*args)

    def forward(self, *args):
        return torch.vmap(self._call, (0, None), randomness="different")(self.params, *args)


def add_official_q_copies(wm: nn.Module) -> None:
    """The official layout's Q copies: `_detach_Qs_params` sharing storage with `_Qs.params`, a cloned
    `_target_Qs_params`, and `_detach_Qs` / `_target_Qs` ensembles running on them."""
    from tensordict.nn import TensorDictParams

    wm._detach_Qs_params = TensorDictParams(wm._Qs.params.data, no_convert=True)
    wm._target_Qs_params = TensorDictParams(wm._Qs.params.data.clone(), no_convert=True)
    with wm._detach_Qs_params.data.to("meta").to_module(wm._Qs.module):
        wm._detach_Qs = deepcopy(wm._Qs)
        wm._target_Qs = deepcopy(wm._Qs)
    wm._detach_Qs.params = wm._detach_Qs_params
    wm._target_Qs.params = wm._target_Qs_params


class LatentWorldModel(nn.Module):
    def __init__(self, obs=5, act=2, latent=32, hidden=48, bins=11, num_q=3, official_ensemble=False):
        super().__init__()
        self.act_dim = act
        self._encoder = nn.ModuleDict({"state": mlp(obs, [hidden], latent, act=SimNorm())})
        self._dynamics = mlp(latent + act, [hidden, hidden], latent, act=SimNorm())
        self._reward = mlp(latent + act, [hidden, hidden], bins)
        self._pi = mlp(latent, [hidden, hidden], 2 * act)
        qs = [mlp(latent + act, [hidden, hidden], bins, dropout=0.01) for _ in range(num_q)]
        self.official = official_ensemble
        if official_ensemble:
            self._Qs = TensorDictEnsemble(qs)
            add_official_q_copies(self)
        else:
            self._Qs = StackedEnsemble.from_modules(qs)
            self._detach_Qs = self._Qs.shared_view()
            self._target_Qs = self._Qs.copy()

    def encode(self, obs):
        return self._encoder["state"](obs)

    def next(self, z, a):
        return self._dynamics(torch.cat([z, a], -1))

    def reward(self, z, a):
        return self._reward(torch.cat([z, a], -1))

    def pi(self, z):
        return self._pi(z)

    def Q(self, z, a, target=False, detach=False):
        net = self._target_Qs if target else (self._detach_Qs if detach else self._Qs)
        return net(torch.cat([z, a], -1))


def rollout(model: LatentWorldModel, inputs):
    """A 2-step latent rollout returning every head's output (the latent is fed back)."""
    obs, actions = inputs
    z = model.encode(obs)
    outs = []
    for a in actions:
        outs += [model.reward(z, a), model.pi(z), model.Q(z, a)]
        z = model.next(z, a)
    outs.append(model.pi(z))
    return outs


def all_heads(model: LatentWorldModel, inputs):
    """Every head including the detached and target Q copies (for equivalence checks)."""
    obs, actions = inputs
    z = model.encode(obs)
    a = actions[0]
    return [z, model.next(z, a), model.reward(z, a), model.pi(z), model.Q(z, a), model.Q(z, a, detach=True), model.Q(z, a, target=True)]


def example_inputs(model: LatentWorldModel, batch=6, horizon=2, obs=5):
    return torch.randn(batch, obs), torch.randn(horizon, batch, model.act_dim)


class ResidualFree(nn.Module):
    """An MLP with LayerNorms and two heads (actor/critic style)."""

    def __init__(self, i=6, h=(32, 24), a=3):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(i, h[0]), nn.LayerNorm(h[0]), nn.Tanh(), nn.Linear(h[0], h[1]), nn.LayerNorm(h[1]), nn.ReLU())
        self.actor = nn.Linear(h[1], a)
        self.critic = nn.Sequential(nn.Linear(h[1], 16), nn.ELU(), nn.Linear(16, 1))

    def forward(self, x):
        f = self.trunk(x)
        return self.actor(f), self.critic(f)
