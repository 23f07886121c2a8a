"""Where the model service's router sends a request: a conversation to the replica that answered it last, where
its photos and prompt are in the model's cache; a new conversation, or one whose replica is gone, to the least
busy replica.

A replica's engine keeps each conversation's KV blocks and its encoded photos (engine/engine.py), so a follow-up
there starts at once, while another replica reads the whole conversation again before its first word.  Ray
Serve's own router spreads requests by load alone, and its FIFO order (``FIFOMixin``) hands the replica found
for one request to whichever request waits longest, which would move conversations between replicas; this
router hands each replica to the request it was chosen for.

The conversation travels as the handle call's ``session_id`` (``handle.options(session_id=...)``), which Ray
puts in every request's metadata.  A router's homes live in the process that holds the handle: the model
service has one ingress replica, which holds the only handle to the model replicas (service/deployment.py), so
one router sees every request.  A conversation's home is learnt when its replica accepts a request
(``on_request_routed``, which Ray calls where replicas may refuse work beyond ``max_ongoing_requests``, as they
do everywhere but through Ray Client).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter, OrderedDict
from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

MAX_CONVERSATIONS = 100_000  # homes remembered; the conversation asked least recently is forgotten first


class ConversationAffinityRouter(RequestRouter):
    """Sticky by conversation, least loaded for the rest; ``max_conversations`` (a ``request_router_kwargs``
    entry) bounds the homes remembered."""

    def initialize_state(self, max_conversations: int = MAX_CONVERSATIONS) -> None:
        self._max_conversations = max_conversations
        self._homes: OrderedDict[str, ReplicaID] = OrderedDict()
        self._held: Counter[ReplicaID] = Counter()  # conversations homed on each replica

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        """Replicas in the order they are tried, one a rank: the conversation's home, then the others by load.
        Ray sends the request to the first that has room, so a home with none (more requests than
        ``max_ongoing_requests``) sends the question elsewhere rather than keeping it waiting."""
        if pending_request is not None:
            pending_request.routing_context.should_backoff = True  # every replica is offered: none left to try
        conversation = pending_request.metadata.session_id if pending_request is not None else ""
        home_id = self._homes.get(conversation) if conversation else None
        home = next((replica for replica in candidate_replicas if replica.replica_id == home_id), None)
        others = [replica for replica in candidate_replicas if replica is not home]
        ranked = await self._by_load(others, ask=home is None)
        return [[replica] for replica in ([home, *ranked] if home is not None else ranked)]

    async def _by_load(self, replicas: list[RunningReplica], *, ask: bool) -> list[RunningReplica]:
        """Fewest requests running first, then fewest conversations held, then at random (new conversations
        spread); replicas whose load is unknown come last.  With ``ask``, loads Ray's cache no longer holds (it
        keeps them seconds) are asked of the replicas, for an idle replica is one that no request went to lately;
        behind a conversation's home the order matters only when the home is full, and nobody waits on asking."""
        cache = self.replica_queue_len_cache
        stale = [replica for replica in replicas if cache.get(replica.replica_id) is None] if ask else []
        if stale:
            deadline = self.max_queue_len_response_deadline_s
            asked = [asyncio.wait_for(replica.get_queue_len(deadline_s=deadline), deadline) for replica in stale]
            for replica, said in zip(stale, await asyncio.gather(*asked, return_exceptions=True), strict=True):
                if isinstance(said, int):
                    cache.update(replica.replica_id, said)

        def load(replica: RunningReplica) -> tuple[bool, int, int, float]:
            running = cache.get(replica.replica_id)
            held = self._held[replica.replica_id]
            return running is None, running or 0, held, random.random()  # noqa: S311 (a tie-break)

        return sorted(replicas, key=load)

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result: Any) -> None:
        conversation = pending_request.metadata.session_id
        if not conversation:
            return
        previous = self._homes.pop(conversation, None)
        if previous is not None:
            self._held[previous] -= 1
        self._homes[conversation] = replica_id
        self._held[replica_id] += 1
        while len(self._homes) > self._max_conversations:
            _, evicted = self._homes.popitem(last=False)
            self._held[evicted] -= 1

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        self._forget_homes({replica_id})

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        running = {replica.replica_id for replica in replicas}
        self._forget_homes({replica_id for replica_id in self._held if replica_id not in running})

    def _forget_homes(self, gone: set[ReplicaID]) -> None:
        """Conversations of replicas that are gone find a new home with their next request."""
        if not gone:
            return
        for conversation in [key for key, home in self._homes.items() if home in gone]:
            del self._homes[conversation]
        for replica_id in gone:
            self._held.pop(replica_id, None)
