"""The policy table, fed with the self-presences real servers send."""

import pytest

from muc_guard import Cause, Decision
from muc_guard.core.policy import (
    DECISIONS,
    classify_join_error,
    classify_removal,
    decide,
)

from stanzas import parse, self_unavailable

ROOM = "room@conference.localhost"


def cause_of(xml: str) -> Cause | None:
    presence = parse(xml)
    muc_user = presence.xep0045_muc_user
    return classify_removal(muc_user.status_codes, destroyed=muc_user.destroy is not None)


@pytest.mark.parametrize("codes, cause", [
    ((110, 333), Cause.SERVER_ERROR),            # Prosody after an error bounce
    ((110, 307, 333), Cause.SERVER_ERROR),       # XEP-0045: ignore 307 with 333
    ((110, 332), Cause.SERVICE_SHUTDOWN),
    ((110, 330), Cause.REMOTE_LOST),             # mod_ping_muc README
    ((110,), Cause.UNEXPLAINED),                 # ejabberd after an error bounce
    ((110, 999), Cause.UNEXPLAINED),             # unknown code: ignored
    ((110, 307), Cause.KICKED),                  # Openfire ping kick, moderator kick
    ((110, 301), Cause.BANNED),
    ((110, 301, 333), Cause.BANNED),             # the room's will wins
    ((110, 321), Cause.AFFILIATION),
    ((110, 321, 333), Cause.AFFILIATION),
    ((110, 322), Cause.MEMBERS_ONLY),
    ((110, 322, 333), Cause.MEMBERS_ONLY),
    ((110, 330, 333), Cause.SERVER_ERROR),
    ((110, 303), None),                          # nick change, not a removal
])
def test_removal_cause_from_self_presence(codes, cause):
    assert cause_of(self_unavailable(ROOM, "bot", *codes)) is cause


def test_destroy_wins_over_every_code():
    assert cause_of(self_unavailable(ROOM, "bot", 110, 333, destroy=True)) is Cause.DESTROYED


@pytest.mark.parametrize("cause, decision", [
    (Cause.SERVER_ERROR, Decision.REJOIN),
    (Cause.REMOTE_LOST, Decision.REJOIN),
    (Cause.UNEXPLAINED, Decision.REJOIN),
    (Cause.PING, Decision.REJOIN),
    (Cause.STREAM_LOST, Decision.REJOIN),
    (Cause.SERVICE_SHUTDOWN, Decision.REJOIN_AFTER_RESTART),
    (Cause.KICKED, Decision.GIVE_UP),
    (Cause.BANNED, Decision.GIVE_UP),
    (Cause.AFFILIATION, Decision.GIVE_UP),
    (Cause.MEMBERS_ONLY, Decision.GIVE_UP),
    (Cause.DESTROYED, Decision.GIVE_UP),
    (Cause.JOIN_ERROR, Decision.GIVE_UP),
])
def test_every_cause_has_its_decision(cause, decision):
    assert decide(cause) is decision


def test_decision_table_covers_every_cause():
    assert set(DECISIONS) == set(Cause)


@pytest.mark.parametrize("condition, error_type, permanent", [
    ("forbidden", "auth", True),
    ("registration-required", "auth", True),
    ("not-authorized", "auth", True),
    ("item-not-found", "cancel", True),
    ("not-allowed", "cancel", True),
    ("conflict", "cancel", True),
    ("remote-server-not-found", "cancel", False),
    ("remote-server-timeout", "wait", False),
    ("service-unavailable", "wait", False),
    ("internal-server-error", "wait", False),
    ("policy-violation", "wait", False),      # unknown here: its type decides
    ("policy-violation", "modify", True),
])
def test_join_errors_permanent_or_transient(condition, error_type, permanent):
    assert classify_join_error(condition, error_type) is permanent
