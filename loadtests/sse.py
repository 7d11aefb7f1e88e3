"""A small parser for the service's server-sent events (``data: <JSON>`` blocks)."""

from __future__ import annotations

import json


def sse_events(lines):
    """Parse ``data: <JSON>`` server-sent events from an iterator of text lines; yields the decoded dicts."""
    buf: list[str] = []
    for line in lines:
        if isinstance(line, bytes):
            line = line.decode("utf-8")
        line = line.rstrip("\r\n")
        if line.startswith("data:"):
            buf.append(line[5:].lstrip())
        elif not line and buf:
            yield json.loads("\n".join(buf))
            buf = []
    if buf:
        yield json.loads("\n".join(buf))
