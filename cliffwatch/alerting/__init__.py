"""The worker, incidents, notifiers and command line: from a detector's decision to a page."""

from .alert import Alert
from .incidents import Incidents, Route
from .notifiers import PagerDutyNotifier, SlackNotifier, escape_mrkdwn
from .worker import Worker, build_notifiers

__all__ = [
    "Alert",
    "Incidents",
    "PagerDutyNotifier",
    "Route",
    "SlackNotifier",
    "Worker",
    "build_notifiers",
    "escape_mrkdwn",
]
