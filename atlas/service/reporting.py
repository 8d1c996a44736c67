"""Error reporting to Sentry (SENTRY_DSN) or Bugsnag (BUGSNAG_API_KEY): off unless configured.

Either library is imported only when its key is set. SENTRY_OPTIONS / BUGSNAG_OPTIONS (dicts in
the config module) pass extra options through, e.g. `traces_sample_rate` or a transport.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Reporter(Protocol):
    """Where unexpected errors go."""

    name: str

    def report(self, exc: BaseException) -> None:
        """Send one exception (must not raise)."""


class NullReporter:
    """Reports nothing: the default when no DSN or API key is configured."""

    name = "none"

    def report(self, exc: BaseException) -> None:
        """Do nothing."""


class SentryReporter:
    """sentry-sdk, initialised for this process (Sentry's client is process-wide)."""

    name = "sentry"

    def __init__(self, dsn: str, realm: str, service: str, options: Mapping[str, Any]) -> None:
        import sentry_sdk

        self._sdk = sentry_sdk
        sentry_sdk.init(
            **{
                "dsn": dsn,
                "environment": realm,
                **options,
            }
        )
        sentry_sdk.set_tag("service", service)

    def report(self, exc: BaseException) -> None:
        """capture_exception (the SDK queues and sends it from its own thread)."""
        self._sdk.capture_exception(exc)


class BugsnagReporter:
    """A bugsnag Client of this app (not the library's global one)."""

    name = "bugsnag"

    def __init__(self, api_key: str, realm: str, service: str, options: Mapping[str, Any]) -> None:
        import bugsnag

        self.client = bugsnag.Client(
            **{
                "api_key": api_key,
                "release_stage": realm,
                "app_type": service,
                "auto_capture_sessions": False,
                "install_sys_hook": False,
                **options,
            }
        )

    def report(self, exc: BaseException) -> None:
        """Notify Bugsnag (delivered from the library's own thread)."""
        self.client.notify(exc)


def make_reporter(config: Mapping[str, Any], realm: str, service: str) -> Reporter:
    """The reporter the config asks for: Sentry if SENTRY_DSN, else Bugsnag if BUGSNAG_API_KEY."""
    dsn = config.get("SENTRY_DSN")
    if dsn:
        reporter: Reporter = SentryReporter(
            str(dsn), realm, service, config.get("SENTRY_OPTIONS") or {}
        )
    elif config.get("BUGSNAG_API_KEY"):
        reporter = BugsnagReporter(
            str(config["BUGSNAG_API_KEY"]), realm, service, config.get("BUGSNAG_OPTIONS") or {}
        )
    else:
        return NullReporter()
    log.info("unexpected errors are reported to %s", reporter.name)
    return reporter
