"""events.jsonl in a run folder: one JSON object a line, appended when a run starts, resumes, is
interrupted, fails or finishes, so a report can tell what happened when.

The file is rewritten whole through resnetlab.fileio on each event (a few lines; at most a handful
of events a run), so a crash leaves the previous complete file, never half a line.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from resnetlab.fileio import write_text

EVENTS_FILE = "events.jsonl"
EVENT_KINDS = (
    "start",
    "resume",
    "capture_fallback",
    "plan_shortened",
    "interrupt",
    "failed",
    "finish",
)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def record_event(folder: str | Path, event: str, **fields) -> dict:
    """Append {"event", "time", **fields} to folder/events.jsonl; returns the record."""
    if event not in EVENT_KINDS:
        raise ValueError(f"unknown event {event!r}; one of {EVENT_KINDS}")
    path = Path(folder) / EVENTS_FILE
    record = {"event": event, "time": now_iso(), **fields}
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    write_text(path, old + json.dumps(record, default=str) + "\n")
    return record


def read_events(folder: str | Path) -> list[dict]:
    """The events of a run, oldest first ([] when it has none); unreadable lines are skipped."""
    path = Path(folder) / EVENTS_FILE
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "event" in record:
            events.append(record)
    return events
