"""Talking to a test Prosody from inside: its admin socket, spoken from Python.

Why this module
===============

Every fault the tests inject into Prosody (a kick with chosen status codes,
a silent removal, a vanished room, a severed connection) is done by Prosody
itself, through ``mod_muc_guard_test`` (``muc_guard/testing/prosody_modules``)
on the MUC component. The way in is Prosody's admin socket (mod_admin_socket
+ mod_admin_shell). Spawning ``prosodyctl shell`` per call would cost a Lua
interpreter start each time and hundreds of calls a test run, so this module
speaks the socket's protocol directly, over a fresh connection per call (no
connection is kept, so a server shared by many event loops is fine).

Wire protocol (util/adminstream.lua): an XML stream in the default namespace
``xmpp:prosody.im/admin``; the client opens the stream, the server answers
with its header; each ``<repl-input>`` line is answered with zero or more
``<repl-output>`` (print) and one ``<repl-result>`` (its ``type='error'`` on
failure).  A line starting with ``>`` runs in Prosody's real global
environment.

`AdminShell` is the client, a base of `ProsodyServer`: it needs only the
server's ``socket_path`` and ``admin_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pathlib
import socket
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any, Iterable, cast
from xml.sax.saxutils import escape as xml_escape

__all__ = ["AdminReply", "AdminShell", "ProsodyAdminError", "lua_string"]

_ADMIN_NS = "xmpp:prosody.im/admin"
_STREAM_HEADER = (
    "<?xml version='1.0'?>"
    "<stream:stream xmlns:stream='http://etherx.jabber.org/streams' "
    f"xmlns='{_ADMIN_NS}' xml:lang='en'>"
).encode()
_STREAM_FOOTER = b"</stream:stream>"


class ProsodyAdminError(RuntimeError):
    """A Lua error or an error result from the admin shell or our module."""


def lua_string(value: str) -> str:
    """A Lua string literal for any text: printable ASCII stays readable;
    quotes, backslashes, control and non-ASCII bytes become 3-digit decimal
    escapes, so nothing can break out of the literal."""
    out = []
    for byte in value.encode():
        ch = chr(byte)
        out.append(ch if 0x20 <= byte < 0x7F and ch not in '\\"' else f"\\{byte:03d}")
    return '"' + "".join(out) + '"'


@dataclass
class AdminReply:
    """One admin-shell exchange: the printed lines and the final result."""

    output: list[str] = field(default_factory=list)
    result: str = ""
    error: bool = False

    @property
    def value(self) -> str:
        """The result text without Prosody's "Result: " / "OK: " prefix."""
        for prefix in ("Result: ", "OK: "):
            if self.result.startswith(prefix):
                return self.result[len(prefix):]
        return self.result

    def text(self) -> str:
        """Printed lines followed by the result value.  A "nil" result (nothing
        returned) is left out when something was printed.  Note that Prosody
        first tries a line as ``return <line>``, so ``print(x)`` alone
        returns print's own result ("true")."""
        lines = list(self.output)
        if not (lines and self.result == "Result: nil"):
            lines.append(self.value)
        return "\n".join(lines)


class _AdminParser:
    """Incremental parser for the admin stream's replies."""

    def __init__(self) -> None:
        self._parser: ET.XMLPullParser = ET.XMLPullParser(events=("start", "end"))
        self._depth = 0
        self.opened = False
        self.closed = False
        self.reply = AdminReply()
        self.done = False

    def feed(self, data: bytes) -> None:
        if not data:
            self.closed = True
            return
        self._parser.feed(data)
        for pair in self._parser.read_events():
            # Only "start"/"end" were asked for: the item is an Element.
            event, elem = cast("tuple[str, ET.Element]", pair)
            if event == "start":
                self._depth += 1
                if self._depth == 1:
                    self.opened = True
                continue
            self._depth -= 1
            if self._depth == 0:
                self.closed = True
            elif self._depth == 1:
                tag = elem.tag.rpartition("}")[2]
                text = elem.text or ""
                if tag == "repl-output":
                    self.reply.output.append(text)
                elif tag == "repl-result":
                    self.reply.result = text
                    self.reply.error = elem.get("type") == "error"
                    self.done = True
                elif tag == "error":  # stream error
                    raise ProsodyAdminError(f"admin stream error: {ET.tostring(elem, 'unicode')}")


def _repl_input(line: str) -> bytes:
    return f"<repl-input>{xml_escape(line)}</repl-input>".encode()


class AdminShell:
    """Run Lua in a Prosody through its admin socket, blocking or async, and
    call ``mod_muc_guard_test``'s functions (JSON in, JSON out)."""

    socket_path: pathlib.Path
    admin_timeout: float

    def _admin_sync(self, line: str, *, timeout: float | None = None) -> AdminReply:
        """One admin-shell line over a fresh blocking connection."""
        timeout = self.admin_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        parser = _AdminParser()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(self.socket_path))
            sock.sendall(_STREAM_HEADER + _repl_input(line))
            while not parser.done:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                try:
                    data = sock.recv(65536)
                except socket.timeout:
                    raise ProsodyAdminError(f"admin socket: no reply within {timeout} s to {line[:200]!r}") from None
                parser.feed(data)
                if parser.closed and not parser.done:
                    raise ProsodyAdminError(f"admin socket closed before replying to {line[:200]!r}")
            with contextlib.suppress(OSError):
                sock.sendall(_STREAM_FOOTER)
        return parser.reply

    async def _admin_async(self, line: str, *, timeout: float | None = None) -> AdminReply:
        """One admin-shell line over a fresh asyncio unix connection (no
        connection is kept, so a server shared by many event loops is fine)."""
        timeout = self.admin_timeout if timeout is None else timeout
        parser = _AdminParser()

        async def exchange() -> None:
            reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
            try:
                writer.write(_STREAM_HEADER + _repl_input(line))
                await writer.drain()
                while not parser.done:
                    parser.feed(await reader.read(65536))
                    if parser.closed and not parser.done:
                        raise ProsodyAdminError(f"admin socket closed before replying to {line[:200]!r}")
                writer.write(_STREAM_FOOTER)
                with contextlib.suppress(OSError):
                    await writer.drain()
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()

        try:
            await asyncio.wait_for(exchange(), timeout)
        except asyncio.TimeoutError:
            raise ProsodyAdminError(f"admin socket: no reply within {timeout} s to {line[:200]!r}") from None
        return parser.reply

    @staticmethod
    def _checked(line: str, reply: AdminReply) -> AdminReply:
        if reply.error:
            raise ProsodyAdminError(f"admin shell error for {line[:300]!r}: {reply.text()}")
        return reply

    async def admin(self, lua: str, *, shell: bool = False) -> str:
        """Run Lua inside the server; return printed lines + the returned value.

        By default the code runs in Prosody's global environment (a ``>``
        line); ``shell=True`` runs it in the console sandbox instead, where
        commands like ``user:create(...)`` or ``muc:list(...)`` live.
        Raises ProsodyAdminError on Lua errors (compile or runtime) and on
        ``nil, "message"`` returns.
        """
        line = lua if shell or lua.startswith(">") else ">" + lua
        return self._checked(line, await self._admin_async(line)).text()

    def admin_sync(self, lua: str, *, shell: bool = False) -> str:
        """Blocking `admin` (for sync fixtures and setup code)."""
        line = lua if shell or lua.startswith(">") else ">" + lua
        return self._checked(line, self._admin_sync(line)).text()

    @staticmethod
    def _call_line(name: str, args: Iterable[Any]) -> str:
        return f">muc_guard_test.call({lua_string(name)}, {lua_string(json.dumps(list(args)))})"

    @staticmethod
    def _decode_call(line: str, reply: AdminReply) -> Any:
        AdminShell._checked(line, reply)
        try:
            payload = json.loads(reply.value)
        except ValueError:
            raise ProsodyAdminError(f"unexpected admin reply to {line[:200]!r}: {reply.text()!r}") from None
        if not payload.get("ok"):
            raise ProsodyAdminError(f"mod_muc_guard_test: {payload.get('error')}")
        return payload.get("result")

    async def call(self, name: str, *args: Any) -> Any:
        """Call ``muc_guard_test.<name>(*args)`` in the server (JSON in/out)."""
        line = self._call_line(name, args)
        return self._decode_call(line, await self._admin_async(line))

    def call_sync(self, name: str, *args: Any) -> Any:
        line = self._call_line(name, args)
        return self._decode_call(line, self._admin_sync(line))
