"""In-memory stand-ins for Beam's bag and value state and its timers, for driving an
AggregationDoFn directly (restore and crash/resume tests)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class FakeBag:
    def __init__(self, items: list[Any] | None = None) -> None:
        self.items = list(items or [])

    def read(self) -> Iterator[Any]:
        return iter(list(self.items))

    def add(self, item: Any) -> None:
        self.items.append(item)

    def clear(self) -> None:
        self.items = []


class FakeValue:
    def __init__(self, value: Any = None) -> None:
        self.value = value

    def read(self) -> Any:
        return self.value

    def write(self, value: Any) -> None:
        self.value = value

    def clear(self) -> None:
        self.value = None


class FakeTimer:
    def __init__(self) -> None:
        self.when: Any = None

    def set(self, when: Any) -> None:
        self.when = when

    def clear(self) -> None:
        self.when = None
