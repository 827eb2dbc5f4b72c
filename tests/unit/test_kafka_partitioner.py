"""The publishers' partitioner (coxswain.runtime.kafka.KeyPartitioner): Kafka's default partition
for every key, each key hashed once however many of its records are sent."""

from __future__ import annotations

import random
import uuid

from aiokafka.partitioner import DefaultPartitioner

from coxswain.runtime.kafka import KeyPartitioner


def test_every_key_goes_where_kafkas_default_partitioner_puts_it() -> None:
    ours, kafkas = KeyPartitioner(), DefaultPartitioner()
    keys = [str(uuid.UUID(int=random.Random(7).getrandbits(128) ^ n)).encode() for n in range(2_000)]
    keys += [b"", b"a", b"lead", bytes(range(256))]
    for count in (1, 3, 6, 12, 50):
        partitions = list(range(count))
        for key in keys:
            assert ours.partition(key, partitions) == kafkas(key, partitions, partitions), (key, count)


def test_a_lead_s_records_hash_its_key_once() -> None:
    partitioner = KeyPartitioner()
    leads = [str(uuid.uuid4()).encode() for _ in range(100)]
    chosen = {lead: {partitioner.partition(lead, range(6)) for _ in range(6)} for lead in leads}
    assert all(len(partitions) == 1 for partitions in chosen.values())
    assert partitioner.hashes_computed() == 100


def test_it_keeps_a_bounded_number_of_hashes() -> None:
    partitioner = KeyPartitioner(kept=10)
    for n in range(20):
        partitioner.partition(str(n).encode(), [0, 1, 2])
    partitioner.partition(b"0", [0, 1, 2])  # forgotten since: hashed again
    assert partitioner.hashes_computed() == 21
