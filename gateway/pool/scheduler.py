"""Which worker serves a request: the live workers of a model, their free slots, a bounded wait queue.

A worker has ``max_concurrency`` slots (from its Ready). A request takes the
least-loaded live worker with a free slot; when none is free it waits in a
bounded per-model queue (full: 429 with Retry-After). A slot freed by a
finished request, a worker joining, or a dead worker's requests failing over
all call ``dispatch()``, which hands waiting requests to free workers.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import GatewayError, model_not_found
from gateway.pool.affinity import Affinity, Prefix, prefix_fingerprints
from protocol.local import listed_under, provider_serves
from protocol.messages import Ready


@dataclass(eq=False)
class WorkerState:
    identity: bytes
    ready: Ready
    last_seen: float
    alive: bool = True
    died_at: float = 0.0
    requests: set[str] = field(default_factory=set)  # this gateway's requests on it
    reported_active: int = 0
    reported_queued: int = 0
    address: str = ""  # the peer address the gateway sees (tcp:// only)
    key_id: str = ""  # the CurveZMQ key it authenticated with (tcp:// with keys only)
    rtt_ms: float | None = None  # heartbeat round trip

    @property
    def id(self) -> str:
        return self.ready.worker_id

    @property
    def names(self) -> set[str]:
        return {self.ready.model, *self.ready.aliases}

    @property
    def slots(self) -> int:
        return max(1, self.ready.max_concurrency)

    @property
    def free(self) -> bool:
        return self.alive and len(self.requests) < self.slots

    def serves(self, provider: str, model: str) -> bool:
        return model in self.names and provider_serves(provider, self.ready.provider)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "provider": self.ready.provider,
            "model": self.ready.model,
            "pid": self.ready.pid,
            "active": len(self.requests),
            "queued": self.reported_queued,
            "worker_active": self.reported_active,
            "max_concurrency": self.slots,
            "alive": self.alive,
            "host": self.ready.host or None,
            "address": self.address or None,
            "key_id": self.key_id or None,
            "heartbeat_rtt_ms": self.rtt_ms,
        }


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """What a scheduling choice looks at: the key (its owner serves it) and the message prefixes."""

    request_id: str
    provider: str
    model: str
    prompt_cache_key: str | None = None
    # The chat request itself, for a choice by shared message prefix (None for embeddings).
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    prefix: tuple[Prefix, ...] = ()  # precomputed prefix fingerprints (else derived from messages)
    worker: bytes | None = None  # control plane: this worker and no other (stats and clear go to each)


@dataclass(eq=False)
class _Waiter:
    request: RequestInfo
    future: asyncio.Future[WorkerState]


class Scheduler:
    def __init__(self, queue_depth: int, expected: Callable[[str, str], bool],
                 failure: Callable[[str], str | None] = lambda _name: None) -> None:
        self.queue_depth = max(0, queue_depth)
        self._expected = expected  # a supervised worker for (provider, model) is (re)starting
        self.failure = failure  # why the supervised worker of this model name cannot start, if it cannot
        self.workers: dict[bytes, WorkerState] = {}
        self._waiters: dict[tuple[str, str], deque[_Waiter]] = {}
        self.affinity = Affinity()
        self._turn = 0

    # ------------------------------------------------------------------ the choice

    def choose(self, workers: list[WorkerState], request: RequestInfo) -> WorkerState:
        """Pick among free live workers that may take the request: the one whose recent requests
        share the longest message prefix with it (cache-aware routing), then the least loaded."""
        if len(workers) == 1:
            return workers[0]
        prefix = self._prefix(request)
        workers, matched = self.affinity.best_prefix(workers, prefix)

        # A new key goes to the worker holding the fewest keys among the least loaded: the workers'
        # own load reports lag by up to a heartbeat, the gateway's key table does not.
        # Likewise a conversation no worker has seen goes to the one serving the fewest others.
        new_key = request.prompt_cache_key is not None
        new_session = not new_key and bool(prefix) and not matched

        def load(w: WorkerState) -> tuple[float, int, int, int]:
            if new_key:
                spread = self.affinity.key_count(w.identity)
            else:
                spread = self.affinity.root_count(w.identity) if new_session else 0
            return len(w.requests) / w.slots, spread, w.reported_queued, w.reported_active

        least = min(load(w) for w in workers)
        ties = [w for w in workers if load(w) == least]
        # Rotate among equally loaded workers: always taking the first would put every new key
        # and every session of a sequential client on one worker while the others sit idle.
        self._turn += 1
        return ties[self._turn % len(ties)]

    def candidates(self, free: list[WorkerState], request: RequestInfo) -> list[WorkerState]:
        """The free workers this request may go to: its forced worker or its key's owner, else any."""
        key = request.prompt_cache_key
        if request.worker is None and key is not None:
            owner = self.affinity.owner(request.model, key)
            worker = self.workers.get(owner) if owner is not None else None
            if owner is not None and (worker is None or not worker.alive):
                # The key's snapshots died with its worker: the next worker chosen becomes its owner.
                self.affinity.unpin(request.model, key)
        narrowed = self.affinity.eligible(free, request.model, key, request.worker)
        return free if narrowed is None else narrowed

    def _prefix(self, request: RequestInfo) -> tuple[Prefix, ...]:
        """The request's prefix fingerprints, computed only when the model has several workers to
        choose from (hashing a long conversation is wasted work on a single worker)."""
        if request.prefix or not request.messages or not self.affinity.cache_aware:
            return request.prefix
        if sum(1 for w in self.workers.values() if w.alive and w.serves(request.provider, request.model)) < 2:
            return ()
        return prefix_fingerprints(request.messages, request.tools)

    def _take(self, worker: WorkerState, request: RequestInfo) -> None:
        worker.requests.add(request.request_id)
        self.affinity.assigned(worker, request.model, request.prompt_cache_key, self._prefix(request))

    def _forced_gone(self, request: RequestInfo) -> GatewayError | None:
        if request.worker is None:
            return None
        worker = self.workers.get(request.worker)
        if worker is not None and worker.alive:
            return None
        return GatewayError(502, "The worker this request was addressed to went away.", type="server_error",
                            code="worker_dead")

    # ------------------------------------------------------------------ acquire / release

    def waiting(self, provider: str, model: str) -> int:
        return sum(1 for w in self._waiters.get((provider, model), ()) if not w.future.done())

    def check_known(self, provider: str, model: str) -> list[WorkerState]:
        """Workers (live or not) serving this model; 404 when none ever did and none is expected."""
        found = [w for w in self.workers.values() if w.serves(provider, model)]
        if not found and not self._expected(provider, model):
            live = sorted({f"{listed_under(w.ready.provider)}/{w.ready.model}"
                           for w in self.workers.values() if w.alive})
            hint = f" Local models: {', '.join(live)}." if live else " No local worker is connected."
            raise model_not_found(f"The model '{provider}/{model}' does not exist: no local worker serves it.{hint}")
        if not any(w.alive for w in found):
            failure = self.failure(model)
            if failure:
                # Fail fast instead of queueing for a worker that keeps failing to load.
                raise self._unavailable(provider, model, failure)
        return found

    @staticmethod
    def _unavailable(provider: str, model: str, failure: str) -> GatewayError:
        return GatewayError(503, f"The worker for {provider}/{model} cannot start: {failure}.",
                            type="server_error", code="worker_unavailable", headers={"Retry-After": "30"})

    def fail_waiting(self, model: str, failure: str) -> None:
        """A supervised worker failed to load: requests waiting for it (and nothing else) get a 503 now."""
        for (provider, name), queue in self._waiters.items():
            if name != model or any(w.alive and w.serves(provider, name) for w in self.workers.values()):
                continue
            for waiter in queue:
                if not waiter.future.done():
                    waiter.future.set_exception(self._unavailable(provider, name, failure))

    async def acquire(self, request: RequestInfo, wait_s: float) -> WorkerState:
        key = (request.provider, request.model)
        self.check_known(*key)
        gone = self._forced_gone(request)
        if gone is not None:
            raise gone
        queue = self._waiters.setdefault(key, deque())
        free = [w for w in self.workers.values() if w.free and w.serves(*key)]
        mine = self.candidates(free, request)
        # Go now unless an earlier waiter could take one of these workers (FIFO per worker): with
        # key affinity, a waiter pinned to a busy worker must not hold up requests for another.
        if mine and not any(not w.future.done() and set(self.candidates(free, w.request)) & set(mine)
                            for w in queue):
            worker = self.choose(mine, request)
            self._take(worker, request)
            return worker
        if self.waiting(*key) >= self.queue_depth:
            raise GatewayError(429, f"Too many requests waiting for {request.provider}/{request.model} "
                               f"(queue depth {self.queue_depth}); retry shortly.",
                               code="queue_full", headers={"Retry-After": "1"})
        future: asyncio.Future[WorkerState] = asyncio.get_running_loop().create_future()
        waiter = _Waiter(request, future)
        queue.append(waiter)
        try:
            return await asyncio.wait_for(asyncio.shield(future), wait_s)
        except BaseException as exc:
            if future.done() and not future.cancelled() and future.exception() is None:
                # Assigned in the same instant the caller gave up (cancelled or timed out): give it back.
                self.release(future.result(), request.request_id)
            else:
                future.cancel()
            if isinstance(exc, TimeoutError):
                raise GatewayError(503, f"No worker for {request.provider}/{request.model} became free within "
                                   f"{wait_s:.0f} s.", type="server_error", code="no_worker_available",
                                   headers={"Retry-After": "5"}) from None
            raise
        finally:
            try:
                queue.remove(waiter)
            except ValueError:
                pass

    def release(self, worker: WorkerState, request_id: str) -> None:
        worker.requests.discard(request_id)
        self.dispatch()

    def dispatch(self) -> None:
        """Hand waiting requests to free workers, oldest first per model (and per pinned worker)."""
        for key, queue in self._waiters.items():
            for waiter in list(queue):
                if waiter.future.done():
                    queue.remove(waiter)
                    continue
                gone = self._forced_gone(waiter.request)
                if gone is not None:
                    queue.remove(waiter)
                    waiter.future.set_exception(gone)
                    continue
                free = [w for w in self.workers.values() if w.free and w.serves(*key)]
                if not free:
                    break
                mine = self.candidates(free, waiter.request)
                if not mine:
                    continue  # its worker is busy; later waiters may still fit elsewhere
                worker = self.choose(mine, waiter.request)
                queue.remove(waiter)
                self._take(worker, waiter.request)
                waiter.future.set_result(worker)

    # ------------------------------------------------------------------ membership

    def add(self, worker: WorkerState) -> None:
        self.workers[worker.identity] = worker
        self.dispatch()

    def prune(self, keep_dead_s: float = 60.0) -> None:
        """Forget workers dead for a while (they stay listed as dead for a minute)."""
        now = time.monotonic()
        for identity, worker in list(self.workers.items()):
            if not worker.alive and now - worker.died_at > keep_dead_s:
                del self.workers[identity]
                self.affinity.forget_worker(identity)
