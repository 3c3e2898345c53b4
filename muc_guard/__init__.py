"""
muc_guard: keep XMPP clients really inside the group chats they think they are in.

A client that joined a XEP-0045 room can stop being an occupant without
noticing (an s2s link dropped, the MUC service restarted, the server kicked it
after a bounced stanza) and then silently misses every message. muc_guard
tracks the rooms a client wants, detects drops (signalled by the server, or
silent and found by XEP-0410 self-ping), rejoins with backoff unless the room
removed us on purpose, and remembers it all in SQLite across restarts.
"""

import importlib
import importlib.util
import logging
from typing import Any

from .core.health import Counters, GapReason, Health, PingVerdict, RoomHealth
from .core.policy import Cause, Decision
from .core.record import RoomInfo, State
from .errors import GaveUpError, GuardError, RoomLeftError
from .store import StoreError

# The aioxmpp front-end is imported on first use (``muc_guard.MUCGuard``), so
# that ``import muc_guard`` and ``import muc_guard.slixmpp`` need no aioxmpp.
_LAZY = {
    "MUCGuard": ".service",
    "GuardMixin": ".mixin",
    "CertificateVerificationError": ".tls",
    "tls": ".tls",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        mod = importlib.import_module(module, __name__)
    except ImportError as exc:
        raise ImportError(f"muc_guard.{name} needs aioxmpp 0.13 (README: Installing): "
                          f"{exc}") from exc
    value = mod if name == "tls" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


# aioxmpp 0.13's certificate check cannot work on current Python and pyOpenSSL;
# importing muc_guard repairs it (see muc_guard.tls for exactly what changes)
# wherever aioxmpp is installed. Without aioxmpp there is nothing to repair.
if importlib.util.find_spec("aioxmpp") is not None:
    try:
        __getattr__("tls").install()
    except ImportError as _exc:   # aioxmpp there but unusable (e.g. no lxml)
        logging.getLogger("muc_guard").warning("aioxmpp's TLS not repaired: %s", _exc)

__version__ = "0.1.0"

__all__ = [
    "MUCGuard",
    "GuardMixin",
    "State",
    "Cause",
    "Decision",
    "RoomInfo",
    "Health",
    "RoomHealth",
    "Counters",
    "GapReason",
    "PingVerdict",
    "GuardError",
    "GaveUpError",
    "RoomLeftError",
    "StoreError",
    "CertificateVerificationError",
    "__version__",
]
