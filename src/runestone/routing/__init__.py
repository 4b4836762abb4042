"""Routing: a model name to targets, and the attempts that get an answer from one.

``router`` (the ``Router``), ``resolve`` (aliases and ``provider:model`` specs),
``attempts`` (order, retries, backoff, one deadline), ``breakers`` (circuit breakers),
``stream`` (a routed stream's states), ``request_ids``.
"""

from runestone.routing.breakers import BreakerConfig, Breakers, CircuitBreaker
from runestone.routing.request_ids import new_request_id
from runestone.routing.router import Routed, Router
from runestone.routing.stream import IllegalTransition, RoutedStream, StreamState

__all__ = [
    "BreakerConfig",
    "Breakers",
    "CircuitBreaker",
    "IllegalTransition",
    "Routed",
    "RoutedStream",
    "Router",
    "StreamState",
    "new_request_id",
]
