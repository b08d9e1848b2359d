"""tdmpc_prune: component-aware, gradient-based structured pruning of RL controllers during training."""
from .config import PruneConfig
from .ensemble import StackedEnsemble
from .errors import PruneConfigError, PruneError
from .groups import Group, Member
from .pruner import Pruner

__all__ = ["Pruner", "PruneConfig", "PruneError", "PruneConfigError", "Group", "Member", "StackedEnsemble"]
__version__ = "0.1.0"
