"""Reading a muc_guard.metrics endpoint (/metrics, /healthz) over HTTP with a
real client (aiohttp), as Prometheus and a load balancer do."""

from __future__ import annotations

from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

#: {(sample name, sorted (label, value) pairs): value}
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Scraper:
    """One endpoint, at `url` (http://127.0.0.1:PORT), on a shared session."""

    def __init__(self, http: aiohttp.ClientSession, url: str, server: Any = None) -> None:
        self.http = http
        self.url = url
        #: the muc_guard.metrics.MetricsServer, when it runs in this process
        self.server = server

    async def samples(self) -> Samples:
        async with self.http.get(f"{self.url}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    async def value(self, name: str, account: Any, **labels: str) -> float:
        """One sample of `account` (a JID or its text)."""
        key = tuple(sorted({"account": str(account), **labels}.items()))
        return (await self.samples())[(name, key)]

    async def healthz(self) -> tuple[int, dict[str, Any]]:
        async with self.http.get(f"{self.url}/healthz") as resp:
            return resp.status, await resp.json()

    async def status_is(self, status: int) -> bool:
        """Whether /healthz answers `status` now (False when nothing answers)."""
        try:
            return (await self.healthz())[0] == status
        except aiohttp.ClientError:
            return False
