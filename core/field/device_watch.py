"""What a link worker learns about its devices from every poll.

`DeviceWatch` keeps each device's health on one link: a Good poll brings it online
(CommunicationRestored), marks the points it does not have as out of service and what is
physically implausible (core/field/plausibility.py) before the sample is published; a
failed poll publishes Bad quality, takes the device offline after `offline_after` failures
(CommunicationLost), backs it off exponentially and, after `quarantine_after`, only probes
it every `quarantine_probe_s` (DeviceQuarantined). The worker owns the schedule: it polls
again after the delay `failed` returns.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

from ..config.site import PollPolicy
from ..contracts import Driver
from ..errors import DeviceRejected, DeviceTimeout, GarbledResponse
from ..events import (
    CommunicationLost,
    CommunicationRestored,
    DeviceQuarantined,
    ImplausibleReading,
    utcnow,
)
from ..model import Quality, Sample
from .diagnostics import DeviceHealth, DeviceState, LinkHealth
from .plausibility import PlausibilityCheck, device_limits

log = logging.getLogger("openprepay.arbiter")


class DeviceWatch:
    """The health of the devices on one link, updated from each poll's outcome."""

    def __init__(
        self,
        link_id: str,
        drivers: Mapping[str, Driver],
        policy: PollPolicy,
        intervals: Mapping[str, float],
        stats: LinkHealth,
        publish: Callable[[object], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.link_id = link_id
        self.drivers = drivers
        self.policy = policy
        self.stats = stats
        self.publish = publish
        self.clock = clock
        self.health = {
            meter_id: DeviceHealth(meter_id, link_id, intervals[meter_id]) for meter_id in drivers
        }
        #: Every sample is checked against its device's physical limits before it is
        #: published (a driver may carry `limits` scaled by CT/PT ratios).
        self.checks = {
            meter_id: PlausibilityCheck(
                driver.model,
                getattr(driver, "limits", None) or device_limits(driver.model, driver.device),
                policy.time_scale,
            )
            for meter_id, driver in drivers.items()
        }
        self._log_extra = {"link": link_id}

    def answered(self, health: DeviceHealth, sample: Sample, latency: float) -> None:
        """A poll succeeded in `latency` seconds: the device is online again."""
        health.polls_ok += 1
        health.latency_s = latency
        health.consecutive_failures = 0
        health.backoff_s = 0.0
        health.last_error = None
        self.stats.window_poll_s += latency
        self.stats.window_polls += 1
        if not health.online:
            health.online = True
            if health.offline_since is not None:
                offline_s = self.clock() - health.offline_since
                health.offline_since = None
                log.info(
                    "meter %s answers again after %.1f s",
                    health.meter_id,
                    offline_s,
                    extra={"meter": health.meter_id, **self._log_extra},
                )
                self.publish(CommunicationRestored(health.meter_id, self.link_id, offline_s))
        health.state = DeviceState.ONLINE
        self.publish_read(health, sample)

    def publish_read(self, health: DeviceHealth, sample: Sample) -> None:
        """Publish a Good sample of the device, its missing and implausible points marked."""
        self._mark_unsupported(health, sample)
        self._check(health, sample)
        self.publish(sample)

    def _check(self, health: DeviceHealth, sample: Sample) -> None:
        """Mark what is physically implausible in `sample` (core/field/plausibility.py); say so
        once per episode and point: a log line and an ImplausibleReading event."""
        check = self.checks[health.meter_id]
        findings = check.assess(sample)
        if check.ended:
            log.info(
                "meter %s: %s plausible again",
                health.meter_id,
                ", ".join(check.ended),
                extra=self._device_extra(health.meter_id),
            )
        if not findings:
            return
        health.implausible_readings += 1
        for finding in check.started:
            log.warning(
                "meter %s: implausible %s = %r, expected %s%s",
                health.meter_id,
                finding.point,
                finding.value,
                finding.limit,
                "; the reading is not billed" if finding.cumulative else "",
                extra=self._device_extra(health.meter_id),
            )
            self.publish(
                ImplausibleReading(
                    health.meter_id, self.link_id, finding.point, finding.value, finding.limit
                )
            )

    def _mark_unsupported(self, health: DeviceHealth, sample: Sample) -> None:
        """Points of the model the device does not deliver (an optional block it answers
        with "illegal data address") are out of service, not "no communication": said
        in the first Good sample after start and after every Bad one, so that a point
        the meter does not have never stays Bad after the meter came back."""
        if not health.unsupported_unsaid:
            return
        health.unsupported_unsaid = False
        missing = [p.name for p in sample.model.points if p.name not in sample.values]
        if not missing:
            return
        marks = dict.fromkeys(missing, Quality.BAD_OUT_OF_SERVICE)
        sample.point_quality = {**marks, **(sample.point_quality or {})}
        if not health.unsupported:
            health.unsupported = tuple(missing)
            log.info(
                "meter %s does not have %s: published as out of service",
                health.meter_id,
                ", ".join(missing),
                extra=self._device_extra(health.meter_id),
            )

    def failed(self, health: DeviceHealth, exc: Exception) -> float:
        """A poll failed with `exc`: count it, publish Bad quality, take the device offline
        or into quarantine as the policy says. Returns the delay before its next poll."""
        health.polls_failed += 1
        health.consecutive_failures += 1
        health.last_error = str(exc)
        self.stats.errors += 1
        if isinstance(exc, DeviceTimeout):
            health.timeouts += 1
            self.stats.timeouts += 1
            quality = Quality.BAD_COMM_FAILURE
        elif isinstance(exc, GarbledResponse):
            health.garbled_frames += 1
            self.stats.garbled_frames += 1
            quality = Quality.BAD_DEVICE_FAILURE
            log.warning(
                "meter %s sent an answer that cannot be used: %s",
                health.meter_id,
                exc,
                extra=self._device_extra(health.meter_id),
            )
        elif isinstance(exc, DeviceRejected):
            self.stats.rejected += 1
            health.rejected += 1
            quality = Quality.BAD_DEVICE_FAILURE
        else:
            quality = Quality.BAD_DEVICE_FAILURE
        self.publish_bad(health, quality, str(exc))
        if health.consecutive_failures >= self.policy.offline_after:
            self.mark_offline(health, str(exc))
        policy = self.policy
        if health.consecutive_failures >= policy.quarantine_after:
            if health.state is not DeviceState.QUARANTINED:
                log.warning(
                    "meter %s quarantined after %d failures: %s",
                    health.meter_id,
                    health.consecutive_failures,
                    exc,
                    extra={"meter": health.meter_id, **self._log_extra},
                )
                self.publish(
                    DeviceQuarantined(health.meter_id, self.link_id, health.consecutive_failures)
                )
            health.state = DeviceState.QUARANTINED
            delay = max(policy.quarantine_probe_s, health.interval_s)
        else:
            health.state = DeviceState.BACKOFF
            backoff = policy.backoff_initial_s * 2 ** (health.consecutive_failures - 1)
            delay = max(min(backoff, policy.backoff_max_s), health.interval_s)
        health.backoff_s = delay
        return delay

    def _device_extra(self, meter_id: str) -> dict[str, object]:
        """Log context of one device: meter, link and Modbus unit id."""
        return {"meter": meter_id, **self._log_extra, "unit": self.drivers[meter_id].device.unit_id}

    def mark_offline(self, health: DeviceHealth, error: str) -> None:
        """The device counts as offline (CommunicationLost, once per episode)."""
        health.online = False
        if health.offline_since is None:
            health.offline_since = self.clock()
            log.warning(
                "meter %s offline: %s",
                health.meter_id,
                error,
                extra={"meter": health.meter_id, **self._log_extra},
            )
            self.publish(CommunicationLost(health.meter_id, self.link_id, error))

    def publish_bad(self, health: DeviceHealth, quality: Quality, error: str) -> None:
        """Publish a sample without values and with Bad `quality`."""
        health.unsupported_unsaid = True
        driver = self.drivers[health.meter_id]
        self.publish(Sample(health.meter_id, driver.model, utcnow(), {}, quality, error=error))
