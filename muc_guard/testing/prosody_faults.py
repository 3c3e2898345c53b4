"""What a test asks of a Prosody's rooms: faults to inject, state to read.

Why this module
===============

muc_guard exists for the ways a room loses a bot that no client can bring
about on its own: a kick with unusual status codes, a removal nobody is told
of, a room that vanishes or comes back without its occupants, a join the
server refuses, a connection cut server-side, archive pages that fail. The
tests make each of them happen inside a real Prosody, through
``mod_muc_guard_test`` (``muc_guard/testing/prosody_modules``), and read the
room as the server holds it (who is in it, with which real JIDs) to check
what the bot believes.

`RoomFaults` is that API, one method per function of the Lua module, each a
`~muc_guard.testing.prosody_admin.AdminShell.call` over the admin socket.
It is a base of `ProsodyServer`, apart from the process and its config
because it is a vocabulary of its own that grows with every new fault.
"""

from __future__ import annotations

from typing import Any

import aioxmpp

from .prosody_admin import AdminShell

__all__ = ["RoomFaults"]


class RoomFaults(AdminShell):
    """Fault injection into, and inspection of, a Prosody's MUC rooms and
    c2s sessions.  Rooms are bare JIDs (str or aioxmpp.JID)."""

    @staticmethod
    def _room(room: str | aioxmpp.JID) -> str:
        jid = room if isinstance(room, aioxmpp.JID) else aioxmpp.JID.fromstr(room)
        if not jid.is_bare:
            raise ValueError(f"room must be a bare JID, got {jid}")
        return str(jid)

    @staticmethod
    def _bare(jid: str | aioxmpp.JID) -> str:
        jid = jid if isinstance(jid, aioxmpp.JID) else aioxmpp.JID.fromstr(jid)
        return str(jid.bare())

    async def occupants(self, room: str | aioxmpp.JID) -> dict[str, list[str]]:
        """nick -> real full JIDs with a live session, read from the server's
        room object; {} when the room does not exist."""
        result = await self.call("occupants", self._room(room))
        return dict(result or {})

    async def room_info(self, room: str | aioxmpp.JID) -> dict[str, Any]:
        """exists/destroyed/persistent/members_only/occupants (with roles)/
        affiliations of a room, as the server sees it."""
        return await self.call("room_info", self._room(room))

    async def kick_with_codes(self, room, nick: str, codes: list[int], reason: str = "") -> list[str]:
        """Remove every session of `nick`, sending them an unavailable self-
        presence with exactly `codes` (+110) and <status>reason</status>;
        others see the unavailable (without 110).  Returns the removed JIDs."""
        return await self.call("kick_with_codes", self._room(room), nick, [int(c) for c in codes], reason)

    async def silent_remove(self, room, nick: str) -> list[str]:
        """Drop `nick` from the room without telling anyone."""
        return await self.call("silent_remove", self._room(room), nick)

    async def keep_occupant(self, room, nick: str, real_jid: str | aioxmpp.JID) -> list[str]:
        """Make the room hold `nick` for the session `real_jid`, sending
        nothing: a server that kept the occupant of a client gone away."""
        return await self.call("keep_occupant", self._room(room), nick, str(real_jid))

    async def bounce_error(self, room, nick: str, condition: str = "recipient-unavailable") -> str:
        """Prosody's own kick-on-bounce path (handle_kickable): 110+333,
        status "Kicked: <condition>", for the occupant's primary session."""
        return await self.call("bounce_error", self._room(room), nick, condition)

    async def kick(self, room, nick: str, reason: str = "") -> None:
        """Moderator kick (role none): 307."""
        await self.call("kick", self._room(room), nick, reason)

    async def ban(self, room, bare_jid, reason: str = "") -> None:
        """Outcast affiliation: 301."""
        await self.call("ban", self._room(room), self._bare(bare_jid), reason)

    async def set_affiliation(self, room, bare_jid, affiliation: str, reason: str = "") -> None:
        await self.call("set_affiliation", self._room(room), self._bare(bare_jid), affiliation, reason)

    async def grant_membership(self, room, bare_jid) -> None:
        await self.call("grant_membership", self._room(room), self._bare(bare_jid))

    async def destroy(self, room, reason: str = "", alternate: str | aioxmpp.JID | None = None) -> None:
        """room:destroy(): everyone gets an unavailable carrying <destroy/>.
        A persistent room then leaves a tombstone (joins/pings get <gone/>)
        unless the server was built with tombstones=False."""
        await self.call("destroy", self._room(room), reason, str(alternate) if alternate else "")

    async def set_members_only(self, room, members_only: bool = True) -> bool:
        """Switch members-only on; Prosody removes non-members with 322."""
        return await self.call("set_members_only", self._room(room), members_only)

    async def revoke_membership(self, room, bare_jid) -> None:
        """Affiliation -> none in a members-only room: 321.  A room that is not
        members-only is switched first, after making the user a member (so the
        switch itself does not remove it with 322)."""
        await self.call("revoke_membership", self._room(room), self._bare(bare_jid))

    async def expire_archive(self, room, age: float = 0) -> None:
        """Delete what the room's archive holds from more than `age` seconds
        ago, as Prosody's ``muc_log_expires_after`` cleanup does."""
        await self.call("expire_archive", self._room(room), age)

    async def rewrite_nick(self, room, requested: str, assigned: str) -> None:
        """From now on a join to `room` as `requested` gets `assigned` (210)."""
        await self.call("rewrite_nick", self._room(room), requested, assigned)

    async def clear_rewrites(self, room=None) -> None:
        await self.call("clear_rewrites", *([self._room(room)] if room is not None else []))

    async def create_room(
        self, room, *, persistent: bool = True, members_only: bool = False,
        mam: bool | None = None, public_jids: bool | None = None,
        history_length: int | None = None, password: str | None = None,
    ) -> bool:
        """Create (or reconfigure) a room server-side; it has no owner, so
        joining users are plain participants.  True if it was created.
        `password` makes it password-protected ("" removes the password)."""
        options: dict[str, Any] = {"persistent": persistent, "members_only": members_only}
        if password is not None:
            options["password"] = password
        if mam is not None:
            options["mam"] = mam
        if public_jids is not None:
            options["whois"] = "anyone" if public_jids else "moderators"
        if history_length is not None:
            options["history_length"] = history_length
        return await self.call("create_room", self._room(room), options)

    async def drop_room(self, room) -> bool:
        """Make the room vanish silently (no presence, no tombstone): its
        occupants are not told; joins create a new room, pings get
        item-not-found."""
        return await self.call("drop_room", self._room(room))

    async def refuse_joins(self, room, condition: str = "remote-server-timeout",
                           error_type: str = "wait", text: str = "") -> None:
        """Answer every join to `room` with this stanza error until cleared."""
        await self.call("refuse_joins", self._room(room), error_type, condition, text)

    async def clear_refusals(self, room) -> int:
        """Stop refusing joins to `room`; return how many joins were refused."""
        return await self.call("clear_refusals", self._room(room))

    async def refused_count(self, room) -> int:
        return await self.call("refused_count", self._room(room))

    async def fail_archive_pages(self, room, *, pass_: int = 1, fail: int = 1,
                                 mode: str = "error",
                                 condition: str = "internal-server-error") -> None:
        """Let the room's next `pass_` archive pages (MAM queries) through,
        then answer `fail` of them with a ``cancel`` error `condition` (mode
        "error") or never (mode "drop"); later pages are answered again."""
        await self.call("fail_archive_pages", self._room(room), pass_, fail, mode, condition)

    async def archive_faults_fired(self, room) -> int:
        """How many archive pages the fault of `room` failed so far."""
        return await self.call("archive_faults_fired", self._room(room))

    async def clear_archive_faults(self, room) -> int:
        return await self.call("clear_archive_faults", self._room(room))

    async def sever_c2s(self, full_jid) -> None:
        """Close a client's TCP connection server-side without a stream close
        (a network failure; with smacks=True the session hibernates)."""
        await self.call("sever_c2s", str(full_jid))

    async def c2s_sessions(self, bare_jid) -> list[dict[str, Any]]:
        return list(await self.call("c2s_sessions", self._bare(bare_jid)) or [])
