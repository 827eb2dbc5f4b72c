"""When a consumer counts as stalled: the watchdog's judgement, kept apart from the loop it watches.

aiokafka keeps a consumer's group membership alive on its own heartbeat task, so a consumer whose
loop hangs (a batch, an offset commit or a partition hand-over that never returns) keeps its
partitions and nobody else reads them; and a consumer whose group never finishes a rebalance
(seen once after a broker restart: the group empty, the member still waiting) reads nothing
while its heartbeats are gone. Neither says anything in the logs. The watchdog in
``coxswain.runtime.consumer`` asks this judgement every few seconds and, on a stall, stops that
Kafka consumer and starts a new one: the batch in flight is rolled back and redelivered, which the
inbox turns into a no-op, so a restart costs a rebalance and never a fact.

While Kafka or PostgreSQL is away the loop is expected to wait (the outage is logged once
already); the clocks start again when it answers, so only a consumer that stays stuck after the
world came back is restarted. A process that did not run at all for that long (SIGSTOP, a VM
pause) is not stuck in its loop: the watchdog says how long it was away, since its partitions may
have moved meanwhile, and lets it carry on. Times are monotonic seconds, passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# What this judgement sees; the consumer adds "client" (a dead aiokafka background task), which
# needs no clock.
LoopStall = Literal["loop", "rebalance"]
StallReason = LoopStall | Literal["client"]


@dataclass
class Liveness:
    stall_after: float
    last_round: float
    rebalancing_since: float | None = None
    last_look: float | None = None  # when the watchdog last looked

    def came_round(self, now: float, rebalancing: bool) -> None:
        """The loop came back for its next fetch; ``rebalancing``: the group has not assigned it yet."""
        self.last_round = now
        if not rebalancing:
            self.rebalancing_since = None
        elif self.rebalancing_since is None:
            self.rebalancing_since = now

    def outage(self, now: float) -> None:
        """A dependency is away: waiting is expected, so the clocks count from its return."""
        self.last_round = now
        if self.rebalancing_since is not None:
            self.rebalancing_since = now

    def paused_for(self, now: float, every: float) -> float | None:
        """The watchdog looks again, ``every`` seconds after it last meant to. When it could not
        look for the stall time beyond that, the whole process was not running (SIGSTOP, a VM or
        garbage-collection pause, a blocked event loop): how long, else None. The loop could not
        run either, so that is not its stall: the clocks count from now."""
        previous, self.last_look = self.last_look, now
        if previous is None or now - previous - every < self.stall_after:
            return None
        self.outage(now)
        return now - previous

    def stalled(self, now: float) -> LoopStall | None:
        if now - self.last_round >= self.stall_after:
            return "loop"
        if self.rebalancing_since is not None and now - self.rebalancing_since >= self.stall_after:
            return "rebalance"
        return None

    def explain(self, reason: LoopStall, now: float) -> str:
        if reason == "loop":
            return f"its loop has not come round for {now - self.last_round:.1f}s"
        since = self.rebalancing_since if self.rebalancing_since is not None else now
        return f"its group has not finished a rebalance for {now - since:.1f}s"
