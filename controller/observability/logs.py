"""Structured logs: one JSON object per line, with the workflow and step in every line that concerns one
(through `extra={"workflow": "ns/name", "step": "x"}` or a LoggerAdapter)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

CONTEXT_FIELDS = ("workflow", "step", "capability", "approval")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value:
                entry[field] = value
        # kopf's per-object loggers carry the object's namespace/name in k8s_ref (or in the message prefix).
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict) and "workflow" not in entry and ref.get("name"):
            entry["object"] = f"{ref.get('namespace') or ''}/{ref['name']}".lstrip("/")
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure(verbose: bool = False, json_lines: bool = True) -> None:
    handler = logging.StreamHandler()
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if not verbose:
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # a line per probe and webhook call
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # a line per watch event and handler
