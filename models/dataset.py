"""Reading event files and label files for training, scoring and evaluation.

Events are Falco JSON lines. A line that does not decode is kept as a `Rejected` value in its place
(never dropped silently): `aerie score` prints an error line for it, training counts it.

Labels are JSON lines too, one object per event, joined by event id (``event_id`` or ``uuid``) or by
``line`` number (1-based):

* the corpus writes ``{"line": n, "uuid": ..., "label": "benign" | "attack", "scenario": ...}``;
* analysts' feedback is ``{"event_id": ..., "label": "benign" | "malicious"}``.

``attack`` and ``malicious`` mean the same thing here.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from aerie.proto.event import DecodeError, FalcoEvent, decode_json

__all__ = ["EventFile", "Label", "LabelError", "Labels", "Rejected", "read_events", "read_labels"]


@dataclass(frozen=True)
class Rejected:
    line: int
    reason: str
    detail: str


@dataclass
class EventFile:
    """Every line of an event file, in order: a `FalcoEvent` or a `Rejected`."""

    path: Path
    records: list[FalcoEvent | Rejected]
    line_numbers: list[int]
    """1-based line of each record in the file."""
    digest: str
    """sha256 of the file's bytes: the training-data digest of the manifest."""

    @property
    def events(self) -> list[FalcoEvent]:
        return [r for r in self.records if isinstance(r, FalcoEvent)]

    def labelled(self, labels: Labels) -> list[tuple[FalcoEvent, Label | None]]:
        """Each decoded event with its label, if the label file has one for it."""
        return [
            (r, labels.get(r, n))
            for r, n in zip(self.records, self.line_numbers, strict=True)
            if isinstance(r, FalcoEvent)
        ]

    @property
    def rejected(self) -> Counter[str]:
        return Counter(r.reason for r in self.records if isinstance(r, Rejected))


def read_events(path: Path) -> EventFile:
    """All lines of ``path`` (blank lines skipped). Raises OSError only if the file cannot be read."""
    data = path.read_bytes()
    records: list[FalcoEvent | Rejected] = []
    numbers: list[int] = []
    for number, line in enumerate(data.splitlines(), start=1):
        if not line.strip():
            continue
        numbers.append(number)
        try:
            records.append(decode_json(line))
        except DecodeError as exc:
            records.append(Rejected(line=number, reason=exc.reason, detail=exc.detail))
    return EventFile(
        path=path, records=records, line_numbers=numbers, digest=hashlib.sha256(data).hexdigest()
    )


class LabelError(ValueError):
    """A label file that cannot be used; names the file and line."""


class Label(msgspec.Struct, frozen=True):
    label: str
    event_id: str | None = None
    uuid: str | None = None
    line: int | None = None
    scenario: str | None = None
    tactic: str | None = None

    @property
    def malicious(self) -> bool:
        return self.label in {"attack", "malicious"}


_LABEL_VALUES = frozenset({"benign", "attack", "malicious"})
_LABEL_DECODER = msgspec.json.Decoder(Label)


@dataclass
class Labels:
    """Labels by event id and by line number."""

    by_id: dict[str, Label] = field(default_factory=dict)
    by_line: dict[int, Label] = field(default_factory=dict)

    def __len__(self) -> int:
        return max(len(self.by_id), len(self.by_line))

    def get(self, event: FalcoEvent, line: int | None = None) -> Label | None:
        found = self.by_id.get(event.event_id)
        if found is None and event.uuid:
            found = self.by_id.get(event.uuid)
        if found is None and line is not None:
            found = self.by_line.get(line)
        return found


def read_labels(path: Path) -> Labels:
    """Read a label file; raises `LabelError` on the first bad line (labels decide what is trained on,
    so a half-read file must not be used)."""
    labels = Labels()
    with path.open("rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                label = _LABEL_DECODER.decode(line)
            except msgspec.DecodeError as exc:
                raise LabelError(f"{path}:{number}: {exc}") from None
            if label.label not in _LABEL_VALUES:
                raise LabelError(f"{path}:{number}: label {label.label!r} is not benign, attack or malicious")
            key = label.event_id or label.uuid
            if key is None and label.line is None:
                raise LabelError(f"{path}:{number}: a label needs event_id, uuid or line")
            if key is not None:
                labels.by_id[key] = label
            if label.line is not None:
                labels.by_line[label.line] = label
    return labels
