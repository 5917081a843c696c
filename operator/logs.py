"""The operator's log output: one handler on the root logger, text or JSON lines.

kopf attaches its Event-posting handler to its own loggers, and while the root logger has
no handler Python prints nothing of theirs: ``configure_logging`` gives the process one
stream handler, so every handler failure reaches ``kubectl logs``. Records about one
deployment carry its namespace and name: kopf's per-object records (``k8s_ref``) and the
operator's own (``extra=deployment_fields(...)``).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

LogFormat = Literal["text", "json"]

_HANDLER_NAME = "exegpt-operator"


def deployment_fields(namespace: str, name: str) -> dict[str, str]:
    """``extra=`` for a log record about one deployment."""
    return {"deployment_namespace": namespace, "deployment_name": name}


def record_deployment(record: logging.LogRecord) -> tuple[str, str] | None:
    """The (namespace, name) a record is about: the operator's own fields, or kopf's
    object reference."""
    namespace = getattr(record, "deployment_namespace", None)
    name = getattr(record, "deployment_name", None)
    if isinstance(namespace, str) and isinstance(name, str):
        return namespace, name
    ref = getattr(record, "k8s_ref", None)
    if isinstance(ref, Mapping) and ref.get("name"):
        return str(ref.get("namespace") or ""), str(ref["name"])
    return None


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the deployment's
    namespace and name where the record is about one, and the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        where = record_deployment(record)
        if where is not None:
            doc["namespace"], doc["name"] = where
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time level logger [namespace/name] message``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(where)s%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        where = record_deployment(record)
        record.where = f"[{where[0]}/{where[1]}] " if where else ""
        return super().format(record)


def configure_logging(
    fmt: LogFormat = "text", level: str = "INFO", stream: TextIO | None = None
) -> logging.Handler:
    """Give the root logger one stream handler (stderr) with ``fmt``; calling it again
    replaces that handler rather than adding a second."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
