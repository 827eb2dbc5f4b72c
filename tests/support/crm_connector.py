"""crm-sync's handler in a ConsumerService of its own, for the connector's integration tests with
any CRM client (HubSpot, Salesforce): delivered through the consumer runtime without Kafka, or
published to Kafka and consumed until an assignment is written."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime

from aiokafka import AIOKafkaProducer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from coxswain.core.agreement import Agreement
from coxswain.runtime.consumer import ConsumerService, Delivery
from coxswain.runtime.kafka import connection_options
from coxswain.settings import ConsumerConfig, KafkaConfig
from schemas.codec import encode
from schemas.events import Event
from services.crm_sync import service as crm_sync
from tests.support.infra import start_group_at_end


class Connector:
    def __init__(
        self,
        engine: AsyncEngine,
        client: crm_sync.CrmClient,
        agreement: Agreement,
        now: datetime,
        connection: str | None = None,
    ) -> None:
        self.engine = engine
        self.client = client
        self.now = now
        self.sync = crm_sync.CrmSync(client, connection)
        self.handler = crm_sync.make_handler(agreement, self.sync)
        self.name = f"crm-it-{uuid.uuid4().hex[:8]}"
        self.offsets = 0

    def service(self) -> ConsumerService:
        return ConsumerService(
            name=self.name,
            accepts=crm_sync.ACCEPTS,
            handler=self.handler,
            engine=self.engine,
            kafka=KafkaConfig(),
            config=ConsumerConfig(),
            clock=lambda: self.now,
        )

    async def deliver(self, *events: Event) -> None:
        """Through the consumer runtime (inbox, whole batch then record by record, DLQ), without Kafka."""
        deliveries = []
        for event in events:
            record = encode(event)
            self.offsets += 1
            deliveries.append(Delivery(record.topic, 0, self.offsets, record.key, record.value, record.headers))
        await self.service().process(deliveries)

    async def through_kafka(self, *events: Event, until: uuid.UUID) -> None:
        """Publish ``events`` and run the consumer until the assignment ``until`` is written."""
        await start_group_at_end(self.name, list(crm_sync.ACCEPTS))
        stop = asyncio.Event()
        running = asyncio.create_task(self.service().run(stop))
        producer = AIOKafkaProducer(**connection_options(KafkaConfig()), acks="all", enable_idempotence=True)
        await producer.start()
        try:
            for event in events:
                record = encode(event)
                await producer.send_and_wait(record.topic, record.value, key=record.key, headers=list(record.headers))
            for _ in range(900):
                async with self.engine.connect() as connection:
                    found = await connection.scalar(
                        text("SELECT count(*) FROM crm_writes WHERE assignment_id = :a"), {"a": until}
                    )
                if found:
                    break
                await asyncio.sleep(0.1)
        finally:
            stop.set()
            await producer.stop()
            await running

    async def aclose(self) -> None:
        await self.client.aclose()
