"""The shared library of messages: which playbook a rep gets for a lead's persona, stage and tier."""

from __future__ import annotations

from coxswain.core.agreement import Agreement, PlaybookEntry
from schemas.events import Playbook, PlaybookContent, Stage, Tier


def specificity(entry: PlaybookEntry) -> int:
    """A persona-specific playbook beats a tier-specific one, which beats a stage-wide one."""
    return (2 if entry.persona is not None else 0) + (1 if entry.tier is not None else 0)


def playbook_for(agreement: Agreement, persona: str | None, stage: Stage, tier: Tier | None) -> Playbook | None:
    candidates = [
        entry
        for entry in agreement.playbooks
        if entry.stage == stage
        and (entry.persona is None or entry.persona == persona)
        and (entry.tier is None or entry.tier == tier)
    ]
    if not candidates:
        return None
    # The loader refuses two entries for the same (stage, persona, tier), so the winner is unique.
    best = max(candidates, key=specificity)
    return Playbook(
        id=best.id,
        persona=best.persona,
        stage=best.stage,
        tier=best.tier,
        talk_track=best.talk_track,
        content=tuple(PlaybookContent(title=item.title, url=item.url) for item in best.content),
    )
