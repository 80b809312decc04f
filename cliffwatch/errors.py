"""The exceptions cliffwatch raises.

Every error cliffwatch raises on purpose derives from :class:`CliffwatchError`::

    CliffwatchError
    ├── ConfigError        bad arguments to configure(), bad options, bad environment
    ├── EventNameError     an event name that is not [a-z0-9_.-]{1,200} (also a ValueError)
    ├── RulesError         a rules file that cannot be used; names the file, line and key
    ├── DataError          a counts file (backtest CSV) that cannot be read; names file and line
    ├── StoreError         Redis cannot be reached or answered with an error
    └── DeliveryError      Slack or PagerDuty refused or could not be reached

The command line turns each of these into a one-line message and a non-zero exit.
"""

from __future__ import annotations


class CliffwatchError(Exception):
    """Root of every error cliffwatch raises on purpose."""


class ConfigError(CliffwatchError):
    """Bad configuration: an unknown option, a value of the wrong type or range."""


class EventNameError(CliffwatchError, ValueError):
    """An event name that is not 1-200 characters of ``[a-z0-9_.-]``."""


class RulesError(CliffwatchError):
    """A rules file that cannot be used. The message names the file, line and key."""


class DataError(CliffwatchError):
    """A counts file that cannot be read. The message names the file and line."""


class StoreError(CliffwatchError):
    """Redis could not be reached, or answered with an error."""


class DeliveryError(CliffwatchError):
    """A notifier could not deliver: the service refused, or could not be reached."""
