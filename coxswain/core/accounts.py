"""Which company a lead belongs to: its domain, as account ownership and same-domain routing see it."""

from __future__ import annotations

import functools
import re
from collections.abc import Collection

from schemas.events import LeadAttributes

_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DOMAIN = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})+$")


def normalize_domain(value: str) -> str | None:
    """``https://www.Acme.com/about`` -> ``acme.com``; None when what is left is not a domain name."""
    text = value.strip().casefold()
    text = re.sub(r"^[a-z][a-z0-9+.-]*://", "", text)
    text = text.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    text = text.rsplit("@", 1)[-1].split(":", 1)[0].rstrip(".")
    text = text.removeprefix("www.")
    return text if _DOMAIN.match(text) else None


def lead_domain(attributes: LeadAttributes, free_mail: Collection[str]) -> str | None:
    """The company domain if given, else the email's; a free-mail domain belongs to no company."""
    free = _casefolded(tuple(free_mail))
    for raw in (attributes.company_domain, attributes.email):
        domain = normalize_domain(raw) if raw else None
        if domain is not None and domain not in free:
            return domain
    return None


@functools.lru_cache(maxsize=16)
def _casefolded(domains: tuple[str, ...]) -> frozenset[str]:
    # An agreement's list, folded once rather than for every lead routed (a routing decision
    # asks for the lead's domain several times).
    return frozenset(domain.casefold() for domain in domains)


def parent_domains(domain: str) -> tuple[str, ...]:
    """``eu.sales.acme.com`` -> (itself, ``sales.acme.com``, ``acme.com``): an account owns its subdomains."""
    labels = domain.split(".")
    return tuple(".".join(labels[i:]) for i in range(len(labels) - 1))
