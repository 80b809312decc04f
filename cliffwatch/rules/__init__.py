"""Rule files and the detector's math: which metrics to watch, and when a drop pages."""

from .config import (
    NOTIFY,
    PAGE,
    SEVERITIES,
    PagerDutyService,
    PagerDutySettings,
    QuietHours,
    Rule,
    RuleDefaults,
    RuleSet,
    SlackSettings,
    default_rules,
    load_rules,
    parse_rules,
)
from .detector import Detector, Transition

__all__ = [
    "NOTIFY",
    "PAGE",
    "SEVERITIES",
    "Detector",
    "PagerDutyService",
    "PagerDutySettings",
    "QuietHours",
    "Rule",
    "RuleDefaults",
    "RuleSet",
    "SlackSettings",
    "Transition",
    "default_rules",
    "load_rules",
    "parse_rules",
]
