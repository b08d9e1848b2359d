"""tdmpc_prune: component-aware, gradient-based structured pruning of RL controllers during training."""
from .adapter import Adapter, Mirror, Wiring
from .config import PruneConfig
from .criteria import Criterion, register_criterion
from .ensemble import StackedEnsemble
from .errors import PruneConfigError, PruneError
from .groups import Group, Member
from .importance import register_statistic
from .pruner import Pruner
from .schedule import register_schedule
from .driver import PruneDriver, RunSummary
from .update_hook import UpdateHook

__all__ = [
    "Pruner", "PruneConfig", "PruneError", "PruneConfigError", "Group", "Member", "StackedEnsemble",
    "Criterion", "register_criterion", "register_schedule", "register_statistic",
    "Adapter", "Wiring", "Mirror", "PruneDriver", "RunSummary", "UpdateHook",
]
__version__ = "0.1.0"
