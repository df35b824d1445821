"""The scale simulation's short version (`python -m bench.scale` runs the matrix)."""

from __future__ import annotations

import asyncio

from bench import scale


class TestScaleSimulation:
    def test_two_domains_with_two_relays_each_apply_every_reset(self) -> None:
        """Every reset sent over two domains is applied by their real relays, and the row says
        how close the run came to the ideal its DCs allow."""
        material = scale.Material()
        result = asyncio.run(
            scale.simulate(material, domains=2, relays=2, callers=4, writes=24, dc_ms=2.0)
        )
        assert result.writebacks == len(result.latencies_ms) == 24
        assert result.ideal == 4 * 1000 / 2.0  # capped by the 4 callers, not the 16 relay slots
        assert 0 < result.throughput <= result.ideal
        row = scale.table([result]).splitlines()[-1]
        assert row.startswith("| 2 | 2 | 4 |")
