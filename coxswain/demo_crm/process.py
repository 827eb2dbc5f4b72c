"""``coxswain demo crm``: one local CRM (HubSpot or Salesforce) as a process, until it is stopped."""

from __future__ import annotations

import asyncio
import logging
import signal

from coxswain.demo_crm import hubspot, salesforce

log = logging.getLogger(__name__)


async def serve_until_stopped(
    kind: str, owners: set[str], token: str, port: int, subscription_url: str | None, client_secret: str | None
) -> None:
    """``coxswain demo crm``: one local CRM on ``port`` until SIGTERM or Ctrl-C."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if kind == "hubspot":
        subscription = None
        if subscription_url and client_secret:
            subscription = hubspot.Subscription(subscription_url, client_secret)
        async with hubspot.serving(owners, token, subscription, port) as served_hubspot:
            log.info(
                "local hubspot serving: url=%s owners=%s webhooks=%s",
                served_hubspot.url,
                len(owners),
                subscription_url or "none",
            )
            await stop.wait()
    else:
        async with salesforce.serving(owners, token, port) as served_salesforce:
            log.info("local salesforce serving: url=%s users=%s", served_salesforce.url, len(owners))
            await stop.wait()
