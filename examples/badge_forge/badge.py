"""One conference badge, rendered to a one-page PDF with WeasyPrint (HTML and CSS in).

WeasyPrint uses the system's Pango through cffi: a missing library shows up as ``OSError`` when
it is imported, so it is imported on first use and both failures become
:class:`RenderUnavailableError` saying what to install.
"""

from __future__ import annotations

import html
import os
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "Attendee",
    "BadgeArgsError",
    "RenderUnavailableError",
    "badge_html",
    "render_badge",
    "require_weasyprint",
]

EVENT = "Badge Forge Conf"

# A badge-sized page. The name shrinks with its length, and its box has a fixed height, clipped
# beyond it (with only a max-height WeasyPrint moves a long name to a second page), so that any
# name stays on one page.
STYLE = """
@page { size: 100mm 70mm; margin: 0; }
body { margin: 0; font-family: "DejaVu Sans", sans-serif; }
.badge { box-sizing: border-box; width: 100mm; height: 70mm; padding: 7mm 8mm;
         position: relative; overflow: hidden; border-top: 9mm solid #4b2c83; }
.event { font-size: 9pt; letter-spacing: 0.5pt; text-transform: uppercase; color: #4b2c83; }
.name { margin: 5mm 0 0; height: 38mm; overflow: hidden; font-weight: bold;
        line-height: 1.1; overflow-wrap: anywhere; }
.id { position: absolute; bottom: 6mm; font-size: 7pt; color: #777; }
"""


class BadgeArgsError(ValueError):
    """A job's args do not describe an attendee (the message names the bad key)."""


class RenderUnavailableError(RuntimeError):
    """WeasyPrint, or the Pango library it draws text with, is not installed."""


@dataclass(frozen=True, slots=True)
class Attendee:
    """Who the badge is for, as the Elixir app sent it: ``%{id: id, name: name}``."""

    #: The attendee's id: an integer or a string (an Ecto UUID), sent back to Elixir unchanged.
    id: int | str
    name: str

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> Attendee:
        """Read ``{"id", "name"}``; :class:`BadgeArgsError` says which key is missing or bad."""
        badge_id, name = args.get("id"), args.get("name")
        if isinstance(badge_id, bool) or not isinstance(badge_id, (int, str)) or badge_id == "":
            raise BadgeArgsError(f'args need "id" (an integer or a string), got {badge_id!r}')
        if not isinstance(name, str) or not name.strip():
            raise BadgeArgsError(f'args need "name" (non-blank text), got {name!r}')
        return cls(badge_id, name.strip())

    @property
    def file_name(self) -> str:
        """``<name>-<id>.pdf`` in lowercase ASCII: no path can be smuggled in through args."""
        return f"{_slug(self.name) or 'badge'}-{_slug(str(self.id)) or 'id'}.pdf"


def badge_html(attendee: Attendee) -> str:
    """The badge as an HTML document (the name escaped)."""
    length = len(attendee.name)
    size = 30 if length <= 16 else 22 if length <= 32 else 16 if length <= 64 else 12
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(attendee.name)}</title><style>{STYLE}</style></head><body>"
        f"<main class='badge'><div class='event'>{EVENT}</div>"
        f"<h1 class='name' style='font-size: {size}pt'>{html.escape(attendee.name)}</h1>"
        f"<div class='id'>#{html.escape(str(attendee.id))}</div></main></body></html>"
    )


def render_badge(attendee: Attendee, folder: Path) -> Path:
    """Write the attendee's badge PDF into ``folder`` (created if needed); returns its path.

    Written to a temporary file and renamed, so a reader (or a retry of the same job) never
    sees half a PDF; rendering the same attendee again replaces the file.
    """
    weasyprint = require_weasyprint()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / attendee.file_name
    partial = folder / f".{attendee.file_name}.{os.getpid()}.partial"
    try:
        weasyprint.HTML(string=badge_html(attendee)).write_pdf(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def require_weasyprint() -> Any:
    """The ``weasyprint`` module, or :class:`RenderUnavailableError` saying what to install."""
    try:
        import weasyprint
    except ImportError as exc:
        raise RenderUnavailableError(
            "WeasyPrint is not installed: pip install 'oban-pro[examples]' (or weasyprint)"
        ) from exc
    except OSError as exc:  # cffi could not load Pango (or one of its libraries)
        raise RenderUnavailableError(
            f"WeasyPrint cannot load the system's Pango ({exc}); on Debian or Ubuntu: "
            "apt-get install libpango-1.0-0 libpangoft2-1.0-0 fonts-dejavu-core"
        ) from exc
    return weasyprint


def _slug(text: str) -> str:
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "-".join(re.findall(r"[a-z0-9]+", ascii_text.lower()))[:60].strip("-")
