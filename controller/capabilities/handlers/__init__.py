"""Python handlers of the stdlib capabilities, by capability id."""

from __future__ import annotations

from controller.capabilities.base import Handler
from controller.capabilities.handlers import fs, sys, testing

HANDLERS: dict[str, Handler] = {**fs.HANDLERS, **sys.HANDLERS, **testing.HANDLERS}
