"""The access log: one JSON line per HTTP request or gRPC call on logger ``mcdrop.access``.

Both front ends write the same shape (:func:`write_access_line`): a timestamp, what the
front end knows of the call (method, path or route, status, duration, client), and the
request's id and trace id from :mod:`service.tracing`. The lines are at INFO: the default
log level writes them, ``MCDROP_LOG_LEVEL=warning`` turns them off.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

from service import tracing

__all__ = ["access_log", "write_access_line"]

access_log = logging.getLogger("mcdrop.access")


def write_access_line(fields: dict[str, Any], ctx: tracing.RequestContext) -> None:
    """One JSON line on ``mcdrop.access`` (at INFO): a timestamp, ``fields``, the request's
    id and trace id."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    line = {"ts": datetime.now(timezone.utc).isoformat(timespec="milliseconds"), **fields}
    line.update(request_id=ctx.request_id, trace_id=ctx.trace_id)
    access_log.info(json.dumps(line))
