"""CPython's cyclic garbage collector, set for a long-lived service process.

CPython collects its youngest generation whenever 700 more container objects have been made than
freed since the last collection. A service under load makes that many within a fraction of one
batch, so nearly every young collection finds the batch it interrupts still in use and moves its
objects on to the older generations; once enough have piled up there, a full collection reads
every object the process holds. In the bench's end-to-end phases scoring and the SLA monitor each
ran 6 to 9 of those per run, 50 to 200 ms each, in which the event loop served no lead, and they
freed nothing: ``collected=0`` (a ``gc.callbacks`` probe; docs/benchmarks-history.md, 6 December,
afternoon).

With the youngest generation collected every 10,000 objects instead, a batch's objects are mostly
freed by their reference counts before a collection sees them: about a twentieth as many young
collections, no full collection while the pipeline was measured, and between a fifth and a third
of the time spent collecting. The older generations keep CPython's thresholds, so a reference
cycle is still freed, only later. Not ``gc.freeze()``: tried and rejected by the bench (5 December).
"""

from __future__ import annotations

import gc

YOUNG_GENERATION_THRESHOLD = 10_000


def tune_for_service() -> None:
    """Collect the youngest generation every ``YOUNG_GENERATION_THRESHOLD`` objects; the older
    generations keep their thresholds."""
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_GENERATION_THRESHOLD, middle, oldest)
