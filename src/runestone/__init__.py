"""Runestone: an LLM gateway. See README.md for the server; the library API is below."""

from runestone._version import __version__
from runestone.aliases import Alias, AliasStore, AliasTable, Target

__all__ = ["Alias", "AliasStore", "AliasTable", "Target", "__version__"]
