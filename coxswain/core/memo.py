"""What is derived from an agreement once, for as long as that agreement object lives.

Agreements are immutable, and the scorer and the simulator ask one agreement the same questions
over and over (which rules a lead's attributes match, which playbook a stage hands out). A memo
is keyed by the agreement object, not its value (agreements hold mappings, so they do not hash),
and is dropped with the object, so it never answers for another agreement and never changes what
a core function returns.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TypeVar, cast

from coxswain.core.agreement import Agreement

T = TypeVar("T")

_Derivations = dict[Callable[[Agreement], object], object]
_MEMOS: dict[int, tuple[weakref.ref[Agreement], _Derivations]] = {}


def derived(agreement: Agreement, derive: Callable[[Agreement], T]) -> T:
    """``derive(agreement)``, computed once per agreement object."""
    key = id(agreement)
    entry = _MEMOS.get(key)
    if entry is None or entry[0]() is not agreement:

        def forget(ref: weakref.ref[Agreement]) -> None:
            if _MEMOS.get(key, (None, None))[0] is ref:
                del _MEMOS[key]

        entry = _MEMOS[key] = (weakref.ref(agreement, forget), {})
    derivations = entry[1]
    if derive in derivations:
        return cast(T, derivations[derive])
    found = derivations[derive] = derive(agreement)
    return found
