"""Traffic management: endpoints, weighted and sticky splits, shadow traffic, canary rollouts
that promote or roll back on their own, and A/B readouts (README, "Traffic management").

The package depends on nothing above it: :class:`TrafficManager` talks to models through the
small :class:`Catalog` protocol, which the Runtime implements over its repository
(:class:`RepositoryCatalog`) and a distributed deployment can implement over its own handles.
"""

from .catalog import Catalog, RepositoryCatalog, Signature
from .manager import Endpoint, Routed, TrafficManager
from .policy import RolloutSpec, TargetRef, TrafficPolicy, parse_policy, parse_rollout, parse_target
from .rollout import Rollout, RolloutState
from .router import Router

__all__ = [
    "Catalog",
    "Endpoint",
    "RepositoryCatalog",
    "Rollout",
    "RolloutSpec",
    "RolloutState",
    "Routed",
    "Router",
    "Signature",
    "TargetRef",
    "TrafficManager",
    "TrafficPolicy",
    "parse_policy",
    "parse_rollout",
    "parse_target",
]
