"""
muc_guard: keep XMPP clients really inside the group chats they think they are in.

A client that joined a XEP-0045 room can stop being an occupant without
noticing (an s2s link dropped, the MUC service restarted, the server kicked it
after a bounced stanza) and then silently misses every message. muc_guard
tracks the rooms a client wants, detects drops (signalled by the server, or
silent and found by XEP-0410 self-ping), rejoins with backoff unless the room
removed us on purpose, and remembers it all in SQLite across restarts.
"""

from . import tls
from .aioxmpp.runner import GaveUpError, GuardError, RoomLeftError
from .core.policy import Cause, Decision
from .core.record import RoomInfo, State
from .mixin import GuardMixin
from .service import MUCGuard
from .store import StoreError
from .tls import CertificateVerificationError

# aioxmpp 0.13's certificate check cannot work on current Python and pyOpenSSL;
# importing muc_guard repairs it (see muc_guard.tls for exactly what changes).
tls.install()

__version__ = "0.1.0"

__all__ = [
    "MUCGuard",
    "GuardMixin",
    "State",
    "Cause",
    "Decision",
    "RoomInfo",
    "GuardError",
    "GaveUpError",
    "RoomLeftError",
    "StoreError",
    "CertificateVerificationError",
    "__version__",
]
