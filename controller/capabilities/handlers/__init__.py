"""Python handlers of the stdlib capabilities, by capability id."""

from __future__ import annotations

from controller.capabilities.base import Handler
from controller.capabilities.handlers import data, fs, http, k8s, sys, testing

HANDLERS: dict[str, Handler] = {
    **data.HANDLERS,
    **fs.HANDLERS,
    **http.HANDLERS,
    **k8s.HANDLERS,
    **sys.HANDLERS,
    **testing.HANDLERS,
}
