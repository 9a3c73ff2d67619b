"""events.jsonl lives in resnetlab.rundir (its name, kinds, reader and writer) with the run
folder's other files; these names stay importable from here for code written against them."""

from resnetlab.rundir import EVENT_KINDS, EVENTS_FILE, now_iso, read_events, record_event

__all__ = ["EVENT_KINDS", "EVENTS_FILE", "now_iso", "read_events", "record_event"]
