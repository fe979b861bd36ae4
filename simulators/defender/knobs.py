"""The records behind Defender's test knobs: the request log, injected faults and per-item rules."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LoggedRequest:
    """One request the service answered: what tests count writes and retries with."""

    method: str
    path: str
    items: int  # indicators (import) or ids (BatchDelete) carried; 1 for single writes, 0 for reads
    status: int
    client_id: str | None


@dataclass
class Fault:
    """An ``inject``ed answer for the next ``remaining`` requests whose path contains ``path_contains``."""

    status: int
    remaining: int
    retry_after: int | None
    path_contains: str | None
    processed: bool


@dataclass
class ItemRule:
    """A ``fail_items`` or ``drop_acknowledged`` rule: items matching ``predicate``, ``remaining`` times."""

    predicate: Callable[[dict[str, Any]], bool]
    remaining: int | None
    reason: str = ""


def take_rule(rules: list[ItemRule], item: dict[str, Any]) -> ItemRule | None:
    """The first rule with uses left that matches ``item``, one use spent; None when none does."""
    for rule in rules:
        if rule.remaining is not None and rule.remaining <= 0:
            continue
        if matches(rule.predicate, item):
            if rule.remaining is not None:
                rule.remaining -= 1
            return rule
    return None


def matches(predicate: Callable[[dict[str, Any]], bool], item: dict[str, Any]) -> bool:
    """``predicate(item)``, where a predicate that raises does not match."""
    try:
        return bool(predicate(item))
    except Exception:  # a predicate that cannot read this item simply does not match it
        return False
