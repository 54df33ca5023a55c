"""Aliases and groups at run time: which target goes first, retries before the first byte, circuit breaking.

A request names an alias (``[models."gpt-5"]``, gateway/pipeline/groups.py) or brings its own
``models: [...]`` list; the router orders the targets by the group's strategy, leaves out the ones
whose circuit is open (or whose Retry-After has not passed), and the pipeline tries them in turn
(``RoutedRun``) until one answers. Only failures before anything was sent to the client are
retried: a non-streaming answer is sent whole, a stream only after its first chunk arrived, and
once a byte went out the error ends the stream as for any model.

State (consecutive failures, the cooldown, in-flight counts, the time-to-first-token average) is
this process's own: with --processes N each front keeps its own breaker.
"""

from __future__ import annotations

import asyncio
import enum
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from gateway.config import GatewayConfig
from gateway.errors import GatewayError, bad_request
from gateway.keys import CONFIG
from gateway.ops.stats import note_retry
from gateway.pipeline.groups import GroupTarget, ModelGroup, RoutingSettings

ROUTER: web.AppKey[Router] = web.AppKey("router")
T = TypeVar("T")
REQUEST_LIST = "models"  # the request extension's name, also the plan's name for it


class Circuit(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"  # the cooldown passed: one probe request may go


class TargetHealth:
    """One target's record: its circuit, its load and how fast it answers."""

    __slots__ = ("consecutive_failures", "failures", "in_flight", "last_error", "open_until", "opened",
                 "probing", "retry_after_until", "served", "ttft_s")

    def __init__(self) -> None:
        self.consecutive_failures = 0
        self.opened = 0  # times opened without a success in between: the cooldown's exponent
        self.open_until = 0.0  # time.monotonic()
        self.probing = False
        self.retry_after_until = 0.0
        self.in_flight = 0
        self.ttft_s: float | None = None  # moving average of the time to the first byte
        self.served = 0
        self.failures = 0
        self.last_error: str | None = None

    def circuit(self, now: float) -> Circuit:
        if self.opened == 0:
            return Circuit.CLOSED
        return Circuit.OPEN if now < self.open_until else Circuit.HALF_OPEN

    def refusal(self, now: float) -> str | None:
        """Why this target is skipped right now, or None when it may be tried."""
        circuit = self.circuit(now)
        if circuit is Circuit.OPEN:
            return f"circuit open for {self.open_until - now:.1f} s more after {self.consecutive_failures} failures"
        if circuit is Circuit.HALF_OPEN and self.probing:
            return "circuit half-open: a probe request is in flight"
        if now < self.retry_after_until:
            return f"asked to wait (Retry-After) {self.retry_after_until - now:.1f} s more"
        return None

    def succeeded(self, ttft_s: float, smoothing: float) -> None:
        self.consecutive_failures = 0
        self.opened = 0
        self.probing = False
        self.served += 1
        self.ttft_s = ttft_s if self.ttft_s is None else (1 - smoothing) * self.ttft_s + smoothing * ttft_s

    def failed(self, settings: RoutingSettings, reason: str, retry_after_s: float | None, now: float) -> None:
        self.failures += 1
        self.consecutive_failures += 1
        self.last_error = reason
        self.probing = False
        if retry_after_s:
            self.retry_after_until = now + retry_after_s
        if self.consecutive_failures >= settings.breaker_failures:
            self.opened += 1
            cooldown = min(settings.breaker_cooldown_s * 2 ** (self.opened - 1), settings.breaker_max_cooldown_s)
            self.open_until = now + cooldown

    def view(self, now: float) -> dict[str, Any]:
        circuit = self.circuit(now)
        return {
            "circuit": circuit.value,
            "consecutive_failures": self.consecutive_failures,
            "open_for_s": round(self.open_until - now, 3) if circuit is Circuit.OPEN else None,
            "in_flight": self.in_flight,
            "ttft_ms": round(self.ttft_s * 1000, 1) if self.ttft_s is not None else None,
            "served": self.served,
            "failures": self.failures,
            "last_error": self.last_error,
        }


@dataclass(frozen=True, slots=True)
class Plan:
    """The targets one request may try, in the order its group's strategy chose."""

    name: str  # the alias, or "models" for the request's own list
    targets: tuple[GroupTarget, ...]
    attempts: int
    deadline_s: float | None = None
    first_byte_timeout_s: float | None = None


class Router:
    def __init__(self) -> None:
        self._health: dict[str, TargetHealth] = {}

    def health(self, target: GroupTarget) -> TargetHealth:
        health = self._health.get(target.key)
        if health is None:
            health = self._health[target.key] = TargetHealth()
        return health

    def plan(self, config: GatewayConfig, model: str | None, request_models: list[str] | None) -> Plan | None:
        """None for a plain ``provider/model`` request (the fast path: one dict lookup)."""
        if request_models:
            return self._request_plan(config, model, request_models)
        group = config.models.get(model) if model else None
        if group is None:
            return None
        return Plan(group.name, self.order(group), group.attempts or len(group.targets), group.deadline_s,
                    group.first_byte_timeout_s)

    def _request_plan(self, config: GatewayConfig, model: str | None, names: list[str]) -> Plan:
        cap = config.routing.max_request_models
        if len(names) > cap:
            raise bad_request(f"models lists {len(names)} models; at most {cap} are accepted.", param="models")
        targets: list[GroupTarget] = []
        for name in [model, *names] if model else names:
            group = config.models.get(name) if isinstance(name, str) else None
            if group is not None:
                targets.extend(self.order(group))
            elif isinstance(name, str) and name and name not in (t.model for t in targets):
                targets.append(GroupTarget(model=name))
        return Plan(REQUEST_LIST, tuple(targets), len(targets))

    def order(self, group: ModelGroup) -> tuple[GroupTarget, ...]:
        targets = group.targets
        if group.strategy == "weighted":
            # weighted sampling without replacement (Efraimidis-Spirakis): the first is chosen by
            # weight, the others follow as fallbacks in weighted order
            return tuple(sorted(targets, key=lambda t: random.random() ** (1.0 / t.weight), reverse=True))
        if group.strategy == "least-busy":
            return tuple(sorted(targets, key=lambda t: self.health(t).in_flight))
        if group.strategy == "latency":
            # a target never measured goes first, so each gets measured
            return tuple(sorted(targets, key=lambda t: self.health(t).ttft_s or 0.0))
        return targets

    def view(self, groups: Mapping[str, ModelGroup]) -> list[dict[str, Any]]:
        """Every group's targets and their circuits, for /providers and /metrics."""
        now = time.monotonic()
        return [{"name": group.name, "strategy": group.strategy,
                 "targets": [{"target": t.key, **self.health(t).view(now)} for t in group.targets]}
                for group in groups.values()]


def _retry_after_s(error: GatewayError) -> float | None:
    value = error.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None  # an HTTP date: the cooldown of the breaker covers it


def retryable(error: GatewayError) -> bool:
    """A failure the next target may not share: the target's own trouble, not the request's."""
    return error.status >= 500 or error.status in (408, 429)


class RoutedRun:
    """One request's walk through its plan: ``next_target`` until one answers (then ``done``)."""

    def __init__(self, app: web.Application, plan: Plan) -> None:
        self.router = app[ROUTER]
        self.settings = app[CONFIG].routing
        self.plan = plan
        self.started = time.monotonic()
        self.deadline = self.started + plan.deadline_s if plan.deadline_s else None
        self.errors: list[str] = []
        self._queue = list(plan.targets)
        self._tried = 0
        self._current: GroupTarget | None = None
        self._attempt_started = 0.0

    async def next_target(self) -> GroupTarget | None:
        """The next target to try (its circuit allows it), or None when none is left."""
        while self._queue and self._tried < self.plan.attempts:
            now = time.monotonic()
            if self.deadline is not None and now >= self.deadline:
                self.errors.append(f"deadline of {self.plan.deadline_s:g} s reached")
                return None
            target = self._queue.pop(0)
            health = self.router.health(target)
            refusal = health.refusal(now)
            if refusal is not None:
                self.errors.append(f"{target.key}: skipped, {refusal}")
                continue
            if health.circuit(now) is Circuit.HALF_OPEN:
                health.probing = True
            self._tried += 1
            health.in_flight += 1
            self._current, self._attempt_started = target, now
            if self._tried > 1:
                note_retry("fallback")
            return target
        return None

    def attempt_timeout(self) -> float | None:
        """How long the current target may take to its first byte (group setting and deadline)."""
        limits = [self.plan.first_byte_timeout_s] if self.plan.first_byte_timeout_s else []
        if self.deadline is not None:
            limits.append(max(0.001, self.deadline - time.monotonic()))
        return min(limits) if limits else None

    def failed(self, error: BaseException) -> GatewayError:
        """The current target failed before its first byte. Returns the error to keep when the next
        target may be tried; re-raises one that the next target would share (the request's own)."""
        target = self._current
        assert target is not None
        self._current = None
        health = self.router.health(target)
        health.in_flight -= 1
        if isinstance(error, TimeoutError):
            error = GatewayError(504, f"no answer within {self.attempt_limit_text()}", type="server_error",
                                 code="upstream_timeout")
        if not isinstance(error, GatewayError):
            health.probing = False
            raise error
        if not retryable(error):
            health.probing = False
            raise error
        health.failed(self.settings, f"{error.status} {error.code or error.type}", _retry_after_s(error),
                      time.monotonic())
        self.errors.append(f"{target.key}: {error.status} {_summary(error.message)}")
        return error

    def attempt_limit_text(self) -> str:
        if self.plan.first_byte_timeout_s and (self.deadline is None or self.plan.first_byte_timeout_s <
                                              self.deadline - self._attempt_started):
            return f"first_byte_timeout_s = {self.plan.first_byte_timeout_s:g} s"
        return f"the deadline of {self.plan.deadline_s:g} s"

    def answered(self) -> None:
        """The current target's first byte arrived: it serves this request."""
        target = self._current
        assert target is not None
        self.router.health(target).succeeded(time.monotonic() - self._attempt_started, self.settings.ttft_smoothing)

    def done(self) -> None:
        """The serving target finished (a stream ended, however it ended)."""
        if self._current is not None:
            self.router.health(self._current).in_flight -= 1
            self._current = None

    def exhausted(self) -> GatewayError:
        """Every target failed or was skipped: 503 with each one's reason (no keys, no bodies)."""
        reasons = "; ".join(self.errors) or "no target could be tried"
        return GatewayError(503, f"Every target of '{self.plan.name}' failed: {reasons}.", type="server_error",
                            code="all_targets_failed")


async def first_answer(run: RoutedRun, attempt: Callable[[GroupTarget], Awaitable[T]]) -> tuple[GroupTarget, T]:
    """Each target in turn until one's ``attempt`` returns a whole answer (non-streaming calls):
    the target and its answer; 503 naming every target when none answered."""
    while (spec := await run.next_target()) is not None:
        try:
            async with asyncio.timeout(run.attempt_timeout()):
                result = await attempt(spec)
        except (GatewayError, TimeoutError) as exc:
            run.failed(exc)  # re-raises what the next target would share
            continue
        except BaseException:
            run.done()
            raise
        run.answered()
        run.done()
        return spec, result
    raise run.exhausted()


def _summary(message: str) -> str:
    """An upstream's message, short: the 503 lists one per target."""
    text = " ".join(message.split())
    return text if len(text) <= 160 else text[:157] + "..."


def setup(app: web.Application) -> None:
    app[ROUTER] = Router()
