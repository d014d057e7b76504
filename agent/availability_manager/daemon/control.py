"""The control socket: one JSON request per line, one JSON answer per line.

Root-only: the socket is created mode 0600 in a 0700 directory. Requests are
`{"cmd": "<name>"}` with optional arguments; answers are
`{"ok": true, "result": ...}` or `{"ok": false, "error": "..."}`. The command
table (`handlers`) maps names to callables of the runtime; this module only
does framing and validation, so it is the same for every command.

A listing can be far larger than one answer should be (a million conntrack
entries are hundreds of MiB of JSON), so a handler may return a `Stream`:
the answer is then `{"ok": true, "stream": true}` followed by one JSON object
per line, the last one carrying `"end": true` (or an `{"ok": false, ...}`
line if the listing fails midway). Each part is written and drained before
the next is produced: a slow reader slows the listing, never fills memory.

A handler whose answer needs the kernel (the data plane's counters are read
with `nft`, tens of milliseconds on a loaded machine) returns an awaitable
instead: the event loop, which sends the heartbeats, is never held up by a
status request; other requests are served meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import inspect
import json
import logging
import os
import stat
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_REQUEST = 4096
Handler = Callable[[Mapping[str, Any]], Any]


@dataclasses.dataclass(frozen=True)
class Stream:
    """A handler's answer sent as many lines (module docstring). The last part
    must carry `"end": true`; the iterator is closed if the client goes away."""

    parts: AsyncIterator[dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Pending:
    """An answer still being computed (a handler returned an awaitable)."""

    command: str
    awaitable: Awaitable[Any]

    async def result(self) -> dict[str, Any]:
        try:
            return {"ok": True, "result": await self.awaitable}
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception:  # as in dispatch: logged, never fatal
            log.exception("control command %s failed", self.command)
            return {"ok": False, "error": f"internal error in {self.command}; see the agent log"}


class ControlError(Exception):
    """A refused request; the message goes back to the client."""


class ControlSetupError(Exception):
    """The control socket cannot be set up safely; the message says why."""


def prepare_socket_path(path: Path) -> None:
    """Make `path` ready to bind without touching anything that is not ours.

    The directory is created 0700 if missing; an existing one is used only if
    it is a real directory of this user that nobody else can write (it is
    never chmodded: it may be /run or /tmp). An old socket left by a crash is
    removed; any other file at the path is refused, never unlinked. A live
    agent's socket is already protected by the state-directory lock."""
    parent = path.parent
    if not parent.exists():
        try:
            parent.mkdir(mode=0o700, parents=True)
        except OSError as exc:
            raise ControlSetupError(
                f"control_socket: cannot create {parent}: {exc.strerror}"
            ) from None
    st = os.lstat(parent)
    if not stat.S_ISDIR(st.st_mode):
        raise ControlSetupError(f"control_socket: {parent} is not a directory")
    if st.st_uid != os.geteuid():
        raise ControlSetupError(
            f"control_socket: {parent} is owned by uid {st.st_uid}, not by this user"
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ControlSetupError(
            f"control_socket: {parent} is writable by group or others; "
            "use a directory of its own (e.g. /run/availability-manager)"
        )
    try:
        existing = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(existing.st_mode):
        raise ControlSetupError(
            f"control_socket: {path} exists and is not a socket; refusing to remove it"
        )
    path.unlink()


class ControlServer:
    def __init__(self, path: Path, handlers: Mapping[str, Handler]) -> None:
        self.path = path
        self.handlers = dict(handlers)
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        prepare_socket_path(self.path)
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_REQUEST
            )
        finally:
            os.umask(old_umask)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await self._reply(writer, {"ok": False, "error": "request too long"})
                    break
                if not line:
                    break
                answer = self.dispatch(line)
                if isinstance(answer, Pending):
                    answer = await answer.result()
                if isinstance(answer, Stream):
                    await self._stream(writer, answer)
                else:
                    await self._reply(writer, answer)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _reply(self, writer: asyncio.StreamWriter, answer: dict[str, Any]) -> None:
        writer.write(json.dumps(answer, separators=(",", ":")).encode() + b"\n")
        await writer.drain()

    async def _stream(self, writer: asyncio.StreamWriter, stream: Stream) -> None:
        parts = stream.parts
        try:
            await self._reply(writer, {"ok": True, "stream": True})
            async for part in parts:
                await self._reply(writer, part)
        except ControlError as exc:
            await self._reply(writer, {"ok": False, "error": str(exc)})
        except (ConnectionError, OSError):
            raise  # the client went away: _serve closes the connection
        except Exception:  # a bug in a listing must not kill the agent
            log.exception("control stream failed")
            await self._reply(writer, {"ok": False, "error": "internal error; see the agent log"})
        finally:
            aclose = getattr(parts, "aclose", None)
            if aclose is not None:
                await aclose()

    def dispatch(self, line: bytes) -> dict[str, Any] | Stream | Pending:
        try:
            request = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {"ok": False, "error": "request is not JSON"}
        except RecursionError:  # e.g. 2,000 nested brackets fit in MAX_REQUEST
            return {"ok": False, "error": "request is nested too deeply"}
        if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
            return {"ok": False, "error": "request must be an object with a 'cmd' string"}
        handler = self.handlers.get(request["cmd"])
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            return {"ok": False, "error": f"unknown command {request['cmd']!r} (known: {known})"}
        try:
            result = handler(request)
            if isinstance(result, Stream):
                return result
            if inspect.isawaitable(result):
                return Pending(request["cmd"], result)
            return {"ok": True, "result": result}
        except ControlError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception:  # a bug must not kill the agent; it is logged in full
            log.exception("control command %s failed", request["cmd"])
            return {"ok": False, "error": f"internal error in {request['cmd']}; see the agent log"}
