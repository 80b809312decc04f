"""The worker, incidents, notifiers and command line: from a detector's decision to a page."""

from .alert import Alert
from .alertmanager import AlertmanagerNotifier, WebhookNotifier
from .incidents import Incidents, Route
from .notifiers import PagerDutyNotifier, SlackNotifier, escape_mrkdwn, sparkline
from .quiet import QuietHold
from .worker import Worker, build_notifiers

__all__ = [
    "Alert",
    "AlertmanagerNotifier",
    "Incidents",
    "PagerDutyNotifier",
    "QuietHold",
    "Route",
    "SlackNotifier",
    "WebhookNotifier",
    "Worker",
    "build_notifiers",
    "escape_mrkdwn",
    "sparkline",
]
