"""Sphinx extension: let the single-page build render every node the HTML build renders.

Sphinx looks up a translator's node handlers by builder name first and falls back to the format
("html") only when no extension registered any handler for that name. ``sphinx_exercise``
registers handlers for ``singlehtml``, so the HTML handlers of the other extensions (myst-nb's
hidden-cell node among them) are never applied there and ``make pdf``'s single-page build stops
with "unknown node type". This extension copies the missing HTML handlers to ``singlehtml``.
"""

from __future__ import annotations


def _copy_html_handlers(app) -> None:
    if app.builder.name != "singlehtml":
        return
    handlers = app.registry.translation_handlers
    single = handlers.setdefault("singlehtml", {})
    for name, pair in handlers.get("html", {}).items():
        single.setdefault(name, pair)


def setup(app) -> dict:
    """Register the handler copy for the single-page builder."""
    app.connect("builder-inited", _copy_html_handlers)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
