"""tdmpc_prune: component-aware, gradient-based structured pruning of RL controllers during training."""
from .config import PruneConfig
from .criteria import Criterion, register_criterion
from .ensemble import StackedEnsemble
from .errors import PruneConfigError, PruneError
from .groups import Group, Member
from .importance import register_statistic
from .pruner import Pruner
from .schedule import register_schedule

__all__ = [
    "Pruner", "PruneConfig", "PruneError", "PruneConfigError", "Group", "Member", "StackedEnsemble",
    "Criterion", "register_criterion", "register_schedule", "register_statistic",
]
__version__ = "0.1.0"
