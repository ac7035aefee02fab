"""Weighted and sticky choice of a target.

Note [Sticky buckets]
~~~~~~~~~~~~~~~~~~~~~
Weights are whole percents; the router lays the targets' shares end to end over 10,000 buckets
(100 per percent) in policy order. A request with a routing key lands in bucket
``blake2b(endpoint, key) mod 10,000``; one without a key in a random bucket. The bucket depends on
the key and the endpoint only, never on the policy, so:

- a key keeps its target for as long as the policy is unchanged (and across restarts: the hash
  is not Python's salted ``hash``);
- moving weight between two neighbouring targets moves only the keys in the moved range (a canary
  going from 5% to 25% keeps its first 5% of users and adds 20% more);
- different endpoints split the same user population independently.

Moving weight of a target that is not a neighbour shifts the ranges in between; a canary rollout
only ever moves weight between its two targets, which it keeps adjacent.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from collections.abc import Sequence

__all__ = ["BUCKETS", "Router", "bucket_of"]

#: Buckets per endpoint: 100 per percent of weight.
BUCKETS = 10_000


def bucket_of(endpoint: str, key: str) -> int:
    """The bucket of ``key`` on ``endpoint`` (Note [Sticky buckets])."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8, key=endpoint.encode()[:64]).digest()
    return int.from_bytes(digest, "little") % BUCKETS


class Router:
    """Chooses the index of a target by weight (whole percents adding up to 100)."""

    __slots__ = ("endpoint", "_bounds", "_random")

    def __init__(self, endpoint: str, weights: Sequence[int]) -> None:
        if sum(weights) != 100 or any(w < 0 for w in weights):
            raise ValueError(f"weights must be >= 0 and add up to 100, got {list(weights)}")
        self.endpoint = endpoint
        bounds, total = [], 0
        for w in weights:
            total += w * (BUCKETS // 100)
            bounds.append(total)
        self._bounds = bounds  # target i owns buckets [bounds[i-1], bounds[i])
        self._random = random.Random()

    def choose(self, key: str | None = None) -> int:
        """The target for a request: by ``key``'s bucket when given, else at random."""
        bucket = bucket_of(self.endpoint, key) if key is not None else self._random.randrange(BUCKETS)
        return bisect.bisect_right(self._bounds, bucket)
