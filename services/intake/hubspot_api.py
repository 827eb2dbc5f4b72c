"""The two HubSpot CRM v3 reads intake needs to understand a webhook event: an engagement or a deal
with its associated contacts (``GET /crm/v3/objects/{calls|emails|meetings|deals}/{id}
?properties=...&associations=contacts``), and a contact's email (``GET
/crm/v3/objects/contacts/{id}?properties=email``).

httpx against the documented endpoints, like crm-sync's client (docs/integrators.md, "Why httpx"),
but without its retries: a read runs while HubSpot waits for the webhook's answer, so a failed
read (HubSpot down, ``429``, a refused token) is answered ``503`` and HubSpot delivers the webhook
again later, which is HubSpot's own retry schedule.
"""

from __future__ import annotations

import logging
from typing import Any

import httpx

from coxswain.core.hubspot_activities import READ_PROPERTIES, HubSpotObject, ObjectKind

log = logging.getLogger(__name__)


class HubSpotUnavailable(Exception):
    """A read failed for a reason that is not the event's: answer 503 so HubSpot tries again."""


class HubSpotReader:
    def __init__(
        self, base_url: str, token: str, timeout_seconds: float, http: httpx.AsyncClient | None = None
    ) -> None:
        self._http = http or httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            headers={"authorization": f"Bearer {token}", "accept": "application/json"},
            timeout=timeout_seconds,
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def read(self, kind: ObjectKind, object_id: str) -> HubSpotObject | None:
        """The object with its contacts; None when HubSpot does not know it (deleted meanwhile)."""
        body = await self._get(
            f"/crm/v3/objects/{kind}/{object_id}",
            {"properties": ",".join(READ_PROPERTIES[kind]), "associations": "contacts"},
        )
        if body is None:
            return None
        properties = body.get("properties") or {}
        associated = ((body.get("associations") or {}).get("contacts") or {}).get("results") or []
        contacts = tuple(
            dict.fromkeys(str(item["id"]) for item in associated if isinstance(item, dict) and "id" in item)
        )
        return HubSpotObject(
            kind=kind,
            object_id=object_id,
            properties={name: None if value is None else str(value) for name, value in properties.items()},
            contact_ids=contacts,
        )

    async def email_of(self, contact_id: str) -> str | None:
        body = await self._get(f"/crm/v3/objects/contacts/{contact_id}", {"properties": "email"})
        if body is None:
            return None
        email = (body.get("properties") or {}).get("email")
        return str(email) if email else None

    async def _get(self, path: str, params: dict[str, str]) -> dict[str, Any] | None:
        try:
            response = await self._http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise HubSpotUnavailable(f"HubSpot GET {path} failed: {type(exc).__name__}") from None
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise HubSpotUnavailable(f"HubSpot GET {path} answered {response.status_code}: {_message(response)}")
        body = response.json()
        if not isinstance(body, dict):
            raise HubSpotUnavailable(f"HubSpot GET {path} answered something that is not an object")
        return body


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    return str(body.get("message", ""))[:200] if isinstance(body, dict) else ""
