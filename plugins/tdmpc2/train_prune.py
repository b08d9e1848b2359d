"""Train an official tdmpc2 agent with tdmpc_prune: the official train.py plus `--prune`.

Run it from inside an official checkout's `tdmpc2/` folder (where train.py and config.yaml are):

    cd tdmpc2/tdmpc2
    python /path/to/plugins/tdmpc2/train_prune.py task=dog-run steps=1000000 --prune prune.sparsity=0.5

Without `--prune` it is the official training. With it, `tdmpc_prune.tdmpc2.attach` registers the
world model's components and groups, the agent's `update` advances the pruning schedule (clock: the
trainer's step), the `prune/*` view is written to TensorBoard under `<work_dir>/tb`, and the pruner
state is saved next to the agent's checkpoint (`prune_state.pt`) for reloading the pruned shapes.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

PLUGIN_CONF = Path(__file__).resolve().parent / "conf"


def _argv_with_prune(argv: list) -> tuple:
    prune = "--prune" in argv
    argv = [a for a in argv if a != "--prune"]
    if prune and not any(a.startswith(("prune=", "+prune=")) for a in argv):
        argv.append("+prune=default")
    argv.append(f"hydra.searchpath=[file://{PLUGIN_CONF}]")
    return prune, argv


def main() -> None:
    if not Path("config.yaml").exists() or not Path("tdmpc2.py").exists():
        sys.exit("train_prune.py: run it from inside the official checkout's tdmpc2/ folder (next to train.py and config.yaml)")
    prune, sys.argv[1:] = _argv_with_prune(sys.argv[1:])
    sys.path.insert(0, os.getcwd())
    os.environ.setdefault("MUJOCO_GL", "egl")

    import hydra
    import torch
    from common.buffer import Buffer
    from common.logger import Logger
    from common.parser import parse_cfg
    from common.seed import set_seed
    from envs import make_env
    from tdmpc2 import TDMPC2
    from trainer.online_trainer import OnlineTrainer

    @hydra.main(config_name="config", config_path=os.getcwd(), version_base=None)
    def train(cfg) -> None:
        from omegaconf import OmegaConf

        prune_opts = OmegaConf.to_container(cfg.prune, resolve=True) if "prune" in cfg else None
        if prune_opts is not None:
            with OmegaConf.read_write(cfg), OmegaConf.open_dict(cfg):
                del cfg["prune"]  # the official parser turns every key into a dataclass field
        cfg = parse_cfg(cfg)
        set_seed(cfg.seed)
        if cfg.multitask:
            sys.exit("train_prune.py drives the online (single-task) trainer only")
        trainer = OnlineTrainer(cfg=cfg, env=make_env(cfg), agent=TDMPC2(cfg), buffer=Buffer(cfg), logger=Logger(cfg))
        if prune and prune_opts is not None:
            from torch.utils.tensorboard import SummaryWriter

            from tdmpc_prune import PruneConfig
            from tdmpc_prune.tdmpc2.attach import attach
            from tdmpc_prune.tdmpc2.update_hook import UpdateHook

            log_every = int(prune_opts.pop("log_every", 1000))
            pruner = attach(trainer.agent, total_steps=int(cfg.steps), config=PruneConfig.from_dict(prune_opts))
            print(pruner)
            writer = SummaryWriter(str(Path(cfg.work_dir) / "tb"))
            UpdateHook(trainer.agent, pruner, clock=lambda: trainer._step, writer=writer, log_every=log_every).install()
            try:
                trainer.train()
            finally:
                state = Path(cfg.work_dir) / "prune_state.pt"
                torch.save(pruner.state_dict(), str(state) + ".tmp")
                os.replace(str(state) + ".tmp", state)
                writer.close()
        else:
            trainer.train()

    train()


if __name__ == "__main__":
    main()
