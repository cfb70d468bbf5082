"""A real MCP client (the PyPI `mcp` package) for the end-to-end tests of
`vx mcp` (tests/tests/mcp.rs) and of Streamable HTTP (daemon/mcp's tests).

usage: python mcp_client.py CONFIG.json

CONFIG: {"server": {"command", "args", "env", "cwd"}} (stdio) or
{"url": "http://127.0.0.1:PORT/"} (Streamable HTTP), and
  "calls": [{"tool": NAME, "args": {...}}, ...]   tools to call in order
  "resources": [URI, ...]                         resources to read
  "cancel": {"tool", "args", "marker", "timeout"} start the call, wait until
      the file `marker` holds a pid, cancel the call (the client sends
      notifications/cancelled), then wait until that process is gone.

Prints one JSON object: the negotiated protocol, the tool list (name,
description, input schema), each call's {is_error, text, progress}, each
resource's text, and the cancel's outcome.
"""

import asyncio
import json
import os
import sys
import time

from mcp import ClientSession, StdioServerParameters, stdio_client


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


async def session_calls(s, cfg):
    if cfg.get("modern"):
        # 2026-07-28: no handshake; `server/discover`, then every request
        # carries the version and client info in its `_meta`.
        d = await s.discover()
        protocol = s._negotiated_version
        server = d.server_info.name if getattr(d, "server_info", None) else "?"
    else:
        init = await s.initialize()
        protocol, server = str(init.protocol_version), init.server_info.name
    out = {
        "protocol": str(protocol),
        "server": server,
        "tools": [],
        "calls": [],
        "resources": [],
    }
    tools = await s.list_tools()
    out["tools"] = [
        {"name": t.name, "description": t.description, "input_schema": t.input_schema}
        for t in tools.tools
    ]
    for c in cfg.get("calls", []):
        progress = []

        async def on_progress(p, total, message, progress=progress):
            progress.append({"progress": p, "total": total, "message": message})

        try:
            res = await s.call_tool(c["tool"], c.get("args", {}), progress_callback=on_progress)
            text = "".join(getattr(b, "text", "") for b in res.content)
            out["calls"].append({"tool": c["tool"], "is_error": bool(res.is_error), "text": text, "progress": progress})
        except Exception as e:  # a protocol error: reported, not raised
            out["calls"].append({"tool": c["tool"], "is_error": True, "protocol_error": str(e), "text": "", "progress": progress})
    for uri in cfg.get("resources", []):
        try:
            r = await s.read_resource(uri)
            out["resources"].append({"uri": uri, "text": r.contents[0].text})
        except Exception as e:
            out["resources"].append({"uri": uri, "error": str(e)})
    if "cancel" in cfg:
        out["cancel"] = await cancel(s, cfg["cancel"])
    return out


async def cancel(s, c):
    marker = c["marker"]
    call = asyncio.ensure_future(s.call_tool(c["tool"], c.get("args", {})))
    deadline = time.monotonic() + c.get("timeout", 30)
    pid = None
    while time.monotonic() < deadline and not call.done():
        try:
            with open(marker) as f:
                pid = int(f.read().strip())
            break
        except (OSError, ValueError):
            await asyncio.sleep(0.05)
    if pid is None:
        res = await call if call.done() else None
        return {"started": False, "result": str(res)}
    call.cancel()
    try:
        await call
    except asyncio.CancelledError:
        pass
    while time.monotonic() < deadline and alive(pid):
        await asyncio.sleep(0.05)
    return {"started": True, "pid": pid, "stopped": not alive(pid)}


async def main():
    with open(sys.argv[1]) as f:
        cfg = json.load(f)
    if "url" in cfg:
        from mcp.client.streamable_http import streamable_http_client

        async with streamable_http_client(cfg["url"]) as streams:
            async with ClientSession(streams[0], streams[1]) as s:
                out = await session_calls(s, cfg)
    else:
        srv = cfg["server"]
        params = StdioServerParameters(
            command=srv["command"], args=srv.get("args", []), env=srv.get("env"), cwd=srv.get("cwd")
        )
        async with stdio_client(params) as (r, w):
            async with ClientSession(r, w) as s:
                out = await session_calls(s, cfg)
    print(json.dumps(out))


asyncio.run(main())
