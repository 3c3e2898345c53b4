"""XEP-0410 §3.2 reply reading, from real IQ error stanzas, and the pair rule."""

import aioxmpp
import pytest

from muc_guard.aioxmpp.facts import error_condition
from muc_guard.core.selfping import PingJudge, PingOutcome, PingVerdict, read_ping_reply

from stanzas import iq_error, parse


def verdict_of(condition: str, type_: str = "cancel") -> PingVerdict:
    iq = parse(iq_error(condition, type_=type_))
    exc = iq.error.to_exception()
    assert isinstance(exc, aioxmpp.errors.XMPPError)
    return read_ping_reply(error_condition(exc))


@pytest.mark.parametrize("condition, verdict", [
    ("service-unavailable", PingVerdict.JOINED),
    ("feature-not-implemented", PingVerdict.JOINED),
    ("item-not-found", PingVerdict.NICK_CHANGED),
    ("remote-server-not-found", PingVerdict.UNDECIDED),
    ("remote-server-timeout", PingVerdict.UNDECIDED),
    ("not-acceptable", PingVerdict.NOT_JOINED),       # recommended by the XEP; Prosody
    ("not-allowed", PingVerdict.NOT_JOINED),
    ("bad-request", PingVerdict.NOT_JOINED),
    ("forbidden", PingVerdict.NOT_JOINED),
])
def test_error_replies(condition, verdict):
    assert verdict_of(condition) is verdict


def test_result_means_joined_and_no_reply_is_undecided():
    assert read_ping_reply(None) is PingVerdict.JOINED
    assert read_ping_reply(None, timed_out=True) is PingVerdict.UNDECIDED


def feed(judge: PingJudge, *replies: str | None) -> list[PingOutcome]:
    """Replies: a condition, None for a result, "timeout" for no reply."""
    out = []
    for reply in replies:
        timed_out = reply == "timeout"
        verdict = read_ping_reply(None if timed_out else reply, timed_out=timed_out)
        out.append(judge.judge(verdict, timed_out=timed_out))
    return out


def test_one_item_not_found_is_inconclusive_two_mean_gone():
    assert feed(PingJudge(), "item-not-found", "item-not-found") == [
        PingOutcome.RETRY, PingOutcome.NOT_JOINED]


def test_a_timeout_does_not_break_the_pair():
    assert feed(PingJudge(), "item-not-found", "timeout", "item-not-found") == [
        PingOutcome.RETRY, PingOutcome.RETRY, PingOutcome.NOT_JOINED]


@pytest.mark.parametrize("between", [None, "remote-server-timeout", "service-unavailable"])
def test_any_other_reply_breaks_the_pair(between):
    outcomes = feed(PingJudge(), "item-not-found", between, "item-not-found")
    assert outcomes[-1] is PingOutcome.RETRY


def test_traffic_breaks_the_pair():
    judge = PingJudge()
    feed(judge, "item-not-found")
    judge.reset()
    assert feed(judge, "item-not-found") == [PingOutcome.RETRY]


def test_undecided_replies_never_decide():
    assert feed(PingJudge(), *["remote-server-not-found", "timeout"] * 5) == [
        PingOutcome.RETRY] * 10
