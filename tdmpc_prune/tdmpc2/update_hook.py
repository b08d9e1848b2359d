"""`UpdateHook` moved to the core (`tdmpc_prune.update_hook`): it fits any agent; this name stays."""
from ..update_hook import UpdateHook

__all__ = ["UpdateHook"]
