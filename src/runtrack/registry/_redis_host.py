"""`RedisHost`: what the parts of `RedisRunRegistry` share, declared once.

`RedisRunRegistry` is assembled from mixins, one concept each (errors, output, retention,
managers, claims, idempotency, notifications). Each inherits this class, which declares
the state the registry's constructor sets and the methods one part calls on another, and
holds the small helpers that need nothing but that state. The registry class, through
its mixins, implements the rest.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

    from runtrack.registry import _redis_layout as layout
    from runtrack.registry._redis_client import Client
    from runtrack.registry._refusals import Candidates

__all__ = ["RedisHost"]


class RedisHost(abc.ABC):
    """The state and shared methods of `RedisRunRegistry`, as its mixins see them."""

    _client: Client
    #: Where the client connects, without the password (for messages).
    _where: str
    #: The start of every key (on a cluster, with its hash tag).
    _prefix: str
    _keys: layout.Keys
    #: Declared by every script call that cannot declare the keys it touches: on a
    #: cluster it routes the call to the node of the prefix's slot.
    _anchor: list[str]
    #: How long finished runs are kept, in microseconds; 0 to keep them.
    _ttl_us: int
    #: The Lua scripts registered with the client, by source (see `_script`).
    _scripts: dict[str, AsyncScript]

    @abc.abstractmethod
    def _guard(
        self, values: Callable[[], Candidates] | None = None
    ) -> AbstractAsyncContextManager[None]:
        """Say what a failure inside means (see `RedisErrors`)."""

    @abc.abstractmethod
    async def _ready(self) -> None:
        """Check the prefix's schema version on first use."""

    def _script(self, source: str) -> AsyncScript:
        """The Lua script ``source``, registered with the client on first use."""
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self._client.register_script(source)
        return script

    def _args(self, *rest: str | int) -> list[str | int]:
        """The ARGV of a script of the write prelude: prefix, ttl, then ``rest``."""
        return [self._prefix, self._ttl_us, *rest]

    @staticmethod
    def _token() -> str:
        """A fresh id for one write script call (a call redis-py re-sends finds its outcome)."""
        return os.urandom(12).hex()

    async def _swept(self, source: str, keys: list[str], args: list[str | int]) -> Any:
        """Call a read script until it has no expired runs left to sweep first."""
        script = self._script(source)
        while True:
            reply = await script(keys=[*self._anchor, *keys], args=args)
            if int(reply[0]) == 0:
                return reply
