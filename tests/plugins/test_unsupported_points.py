"""A point the meter does not have (its optional register block answers "illegal data
address") is out of service, not Bad-no-communication: also after a communication loss,
once the meter answers again (issue 9 §10). Before, the Bad sample of the loss left such a
point BadNoCommunication for good, since no later sample carried it."""

from __future__ import annotations

from openprepay.core.app.plugins import Plugins
from openprepay.core.app.runtime import Runtime
from openprepay.core.app.simulation import SimulatedSite
from openprepay.core.config.site import LinkType
from openprepay.core.contracts import SimulatorOptions
from openprepay.core.events import CommunicationLost, CommunicationRestored
from openprepay.core.model import Quality, Sample
from tests.conftest import until

from .conftest import Meter, site_of

#: Points of the DDSY1352's optional blocks (frequency at 0x0011, deep valley at 0x5030).
OPTIONAL = ("frequency", "energy_deep_valley")


async def test_a_point_the_meter_lacks_stays_out_of_service_after_a_loss(
    plugins: Plugins, link_type: LinkType
) -> None:
    meter = Meter("acrel.DDSY1352", options={"sim_optional_blocks": False})
    site = site_of(link_type, meter, interval_s=0.2)
    options = SimulatorOptions(speedup=0, ephemeral_ports=True)
    async with SimulatedSite(site, plugins, options) as sims:
        runtime = Runtime(sims.service_site(), plugins)
        samples: list[Sample] = []
        events: list[object] = []
        runtime.bus.subscribe(Sample, lambda s: s.source == "M1" and samples.append(s))
        runtime.bus.subscribe(CommunicationLost, events.append)
        runtime.bus.subscribe(CommunicationRestored, events.append)
        async with runtime:
            await until(lambda: any(s.quality.is_good for s in samples))
            first = next(s for s in samples if s.quality.is_good)
            for point in OPTIONAL:
                assert point not in first.values
                assert first.quality_of(point) is Quality.BAD_OUT_OF_SERVICE, point
            assert first.quality_of("energy_total") is Quality.GOOD

            sims.devices["M1"].silent = True
            await until(lambda: any(isinstance(e, CommunicationLost) for e in events))
            sims.devices["M1"].silent = False
            await until(lambda: any(isinstance(e, CommunicationRestored) for e in events))
            await until(lambda: samples[-1].quality.is_good)
            last_bad = max(i for i, s in enumerate(samples) if not s.quality.is_good)
            assert samples[last_bad].quality is Quality.BAD_COMM_FAILURE
            back = samples[last_bad + 1]
            # The first Good sample after the loss says again what the meter lacks, so no
            # view keeps those points Bad-no-communication.
            for point in OPTIONAL:
                assert back.quality_of(point) is Quality.BAD_OUT_OF_SERVICE, point
            assert back.quality_of("energy_total") is Quality.GOOD
