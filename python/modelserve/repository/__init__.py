"""Model repository: discovery, versions and their lifecycle, routing, swaps and rollback."""

from .repository import LoadError, ManagedModel, ModelRepository, scan_repository, validate_repository
from .versions import ModelVersion, Transition, VersionState

__all__ = [
    "LoadError",
    "ModelRepository",
    "ManagedModel",
    "ModelVersion",
    "Transition",
    "VersionState",
    "scan_repository",
    "validate_repository",
]
