"""Runs an Argo CD health check (charts/airun/argocd/.../health.lua) on an object with gopher-lua's interpreter, the
Lua implementation Argo CD embeds, in an environment like Argo CD's: the object as the global `obj`, only the
base, table and a small os library (Argo CD opens neither string nor io nor math, so strings have no
methods either), the returned table read as
{status, message}."""

from __future__ import annotations

import math
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.gotools import REPO, tool

CUSTOMIZATIONS = REPO / "charts" / "airun" / "argocd" / "resource_customizations"
HEALTH_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}

_PRINTABLE = {c for c in range(0x20, 0x7F)} - {ord('"'), ord("\\")}

# What the script sees: Argo CD's runLua opens package, base, table and a "safe" os (time, date) only.
_HARNESS = """
-- Without Argo CD's missing string library strings have no methods either ("x"):upper().
getmetatable("").__index = nil
local sandbox = {}
for _, name in ipairs({"assert", "error", "ipairs", "next", "pairs", "pcall", "select", "tonumber", "tostring",
                       "type", "unpack", "xpcall", "rawequal", "rawget", "rawset", "getmetatable",
                       "setmetatable", "print", "require"}) do
  sandbox[name] = _G[name]
end
sandbox.table = table
sandbox.os = {time = os.time, date = os.date}
sandbox.obj = %(object)s
local check = assert(loadfile(%(script)s))
setfenv(check, sandbox)
local hs = check()
if type(hs) ~= "table" then
  error("the health check returned " .. type(hs) .. ", not a table")
end
io.write(tostring(hs.status), "\\0", hs.message == nil and "" or tostring(hs.message))
"""


def lua_literal(value: Any) -> str:
    """VALUE (decoded JSON/YAML) as a Lua expression, as Argo CD's decodeValue builds it: maps and lists become
    tables (lists 1-based), numbers numbers, strings strings byte for byte."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} has no JSON form")
        return repr(value)
    if isinstance(value, str):
        return '"' + "".join(chr(b) if b in _PRINTABLE else f"\\{b:03d}" for b in value.encode()) + '"'
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"[{lua_literal(str(k))}] = {lua_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    raise TypeError(f"{type(value).__name__} is not a JSON value")


@dataclass(frozen=True)
class Health:
    status: str
    message: str


def health_script(group: str, kind: str) -> Path:
    return CUSTOMIZATIONS / group / kind / "health.lua"


def assess(script: Path, obj: Mapping[str, Any]) -> Health:
    """Runs SCRIPT on OBJ with glua; raises if the script fails or returns something Argo CD would not take."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as program:
        program.write(_HARNESS % {"object": lua_literal(obj), "script": lua_literal(str(script))})
    try:
        result = subprocess.run([str(tool("lua", "glua")), program.name], capture_output=True, timeout=30, check=False)
    finally:
        Path(program.name).unlink()
    if result.returncode != 0 or result.stderr:  # glua reports Lua errors on stdout
        output = (result.stdout + result.stderr).decode(errors="replace")
        raise RuntimeError(f"{script} failed on {obj.get('metadata', {}).get('name')}: {output}")
    status, _, message = result.stdout.decode().partition("\0")
    if status not in HEALTH_STATUSES:
        raise AssertionError(f"{script} returned {status!r}, which Argo CD reads as Unknown")
    return Health(status, message)
