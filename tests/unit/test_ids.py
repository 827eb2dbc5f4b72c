"""``coxswain.core.ids.uuid5`` is ``uuid.uuid5``: every derived id (leads, events, facts, timers)
must stay what earlier releases derived, or replays would stop deduplicating."""

from __future__ import annotations

import pickle
import uuid

from hypothesis import given
from hypothesis import strategies as st

from coxswain.core.identity import EVENT_NAMESPACE, LEAD_NAMESPACE
from coxswain.core.ids import uuid5, uuid_from_int

namespaces = st.one_of(
    st.sampled_from([LEAD_NAMESPACE, EVENT_NAMESPACE, uuid.NAMESPACE_URL, uuid.UUID(int=0), uuid.UUID(int=2**128 - 1)]),
    st.uuids(),
)


@given(namespaces, st.text())
def test_the_same_uuid_as_the_standard_library(namespace: uuid.UUID, name: str) -> None:
    ours, theirs = uuid5(namespace, name), uuid.uuid5(namespace, name)

    assert ours == theirs
    assert (ours.int, ours.version, ours.variant, ours.is_safe) == (theirs.int, 5, uuid.RFC_4122, theirs.is_safe)
    assert (str(ours), hash(ours), ours.bytes) == (str(theirs), hash(theirs), theirs.bytes)
    assert pickle.loads(pickle.dumps(ours)) == theirs


@given(st.integers(min_value=0, max_value=2**128 - 1))
def test_a_uuid_from_its_integer_is_the_one_the_constructor_makes(value: int) -> None:
    made = uuid_from_int(value)

    assert made == uuid.UUID(int=value)
    assert (str(made), hash(made), made.is_safe) == (
        str(uuid.UUID(int=value)),
        hash(uuid.UUID(int=value)),
        uuid.SafeUUID.unknown,
    )
