"""Plain-text tables for the terminal."""

from __future__ import annotations

from collections.abc import Sequence

from tributary.stack.component import ComponentStatus


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces, with a dashed rule under the headers."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(cell).ljust(width) for cell, width in zip(cells, widths, strict=False)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(row) for row in rows)])


def status_table(statuses: Sequence[ComponentStatus]) -> str:
    """The component summary (component, state, pid, endpoint, log), then why any is unhealthy."""
    rows = [[s.name, str(s.state), str(s.pid or "-"), s.endpoint, str(s.log or "-")] for s in statuses]
    notes = [f"{s.name}: {s.detail}" for s in statuses if s.detail]
    return "\n".join([render_table(["component", "state", "pid", "endpoint", "log"], rows), *notes])
