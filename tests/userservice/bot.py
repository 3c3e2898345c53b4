"""A user's own aioxmpp service with GuardMixin folded in (services must live in a package)."""

import aioxmpp
import aioxmpp.service

import muc_guard


class EchoService(muc_guard.GuardMixin, aioxmpp.service.Service):
    ORDER_AFTER = [aioxmpp.MUCClient]

    def __init__(self, client, **kwargs):
        super().__init__(client, **kwargs)
        self.own_events: list[str] = []
        self.shut_down_own = False
        self.on_dropped.connect(lambda jid, cause: self.own_events.append("dropped"))

    async def _shutdown(self):
        self.shut_down_own = True
        await super()._shutdown()


class Forgetful(muc_guard.GuardMixin, aioxmpp.service.Service):
    """Forgot to list MUCClient in ORDER_AFTER."""

