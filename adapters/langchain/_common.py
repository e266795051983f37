"""Shared helpers: one Home per path per process, message text, failure reporting."""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

logger = logging.getLogger("agentsleep.adapters.langchain")

#: Name of the LangChain custom event sent when memory is unavailable (recall or
#: record failed). Handlers receive it in ``on_custom_event(name, data, ...)``;
#: ``data`` is ``{"stage": "recall"|"record"|..., "error": str, "error_type": str}``.
MEMORY_ERROR_EVENT = "agentsleep_memory_error"

_HOMES: dict[Path, Any] = {}
_HOMES_LOCK = threading.Lock()


def resolve_home(home: Any) -> Any:
    """A Home from a Home, a path, or None ($AGENTSLEEP_HOME / the default home).

    Paths are opened once per process and shared: an embedded Chroma store allows
    one writer process, and within a process every adapter must use the same Home.
    Anything with ``recall``/``remember`` is used as is (duck typing, e.g. a stub).
    """
    if home is not None and not isinstance(home, (str, Path)):
        return home
    from agentsleep.home import Home, default_home

    root = (Path(home).expanduser() if home is not None else default_home()).resolve()
    with _HOMES_LOCK:
        h = _HOMES.get(root)
        if h is None:
            h = Home.open(root)
            _HOMES[root] = h
        return h


def content_text(content: Any) -> str:
    """Plain text of a message's content (a string or a list of content blocks)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type") in ("text", None) and isinstance(block.get("text"), str):
                parts.append(block["text"])
        return "".join(parts)
    return str(content)


def describe(err: BaseException) -> str:
    msg = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {msg}" if msg else type(err).__name__


def failure_data(stage: str, err: BaseException) -> dict[str, str]:
    return {"stage": stage, "error": describe(err), "error_type": type(err).__name__}


def warn_failure(stage: str, err: BaseException) -> dict[str, str]:
    """Log a memory failure as a warning (never silently) and return the event payload."""
    data = failure_data(stage, err)
    logger.warning("agentsleep memory unavailable during %s; continuing without it (%s)", stage, data["error"])
    return data


def emit_failure(run_manager: Any, stage: str, err: BaseException) -> None:
    """Warn, and send MEMORY_ERROR_EVENT to the run's callback handlers (sync run managers)."""
    data = warn_failure(stage, err)
    if run_manager is None:
        return
    try:
        run_manager.get_child().on_custom_event(MEMORY_ERROR_EVENT, data, run_id=run_manager.run_id)
    except Exception as e:  # noqa: BLE001 - a broken handler must not break the agent
        logger.warning("agentsleep: could not dispatch %s to callbacks (%s)", MEMORY_ERROR_EVENT, describe(e))


async def aemit_failure(run_manager: Any, stage: str, err: BaseException) -> None:
    """Async twin of emit_failure (async run managers)."""
    data = warn_failure(stage, err)
    if run_manager is None:
        return
    try:
        await run_manager.get_child().on_custom_event(MEMORY_ERROR_EVENT, data, run_id=run_manager.run_id)
    except Exception as e:  # noqa: BLE001
        logger.warning("agentsleep: could not dispatch %s to callbacks (%s)", MEMORY_ERROR_EVENT, describe(e))
