"""Test doubles shared across test folders."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FakeClock:
    """Seconds that only move when someone sleeps: a client's waits and a simulator's windows agree, instantly."""

    now: float = 1_000_000.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
