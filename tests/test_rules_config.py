"""The rules file: parsing, the error messages users see, secrets, globs, warnings."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cliffwatch.errors import RulesError
from cliffwatch.rules.config import (
    PagerDutySettings,
    Rule,
    RuleDefaults,
    RuleSet,
    SlackSettings,
    default_rules,
    load_rules,
    parse_rules,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "rules.toml"
NO_ENV: dict[str, str] = {}
SECRET = "xoxb-0000-VERY-SECRET"


def error(text: str, env: dict[str, str] | None = None) -> str:
    """The one-line message parse_rules raises for ``text`` (named rules.toml)."""
    with pytest.raises(RulesError) as info:
        parse_rules(text, "rules.toml", NO_ENV if env is None else env)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- the error messages, each at its file:line and naming its key -----------------------


def test_unknown_key_names_line_table_and_suggestion() -> None:
    """A misspelt key is reported at its own line, in its numbered [[rule]], with a fix."""
    text = (
        '[defaults]\nthreshold = -3.0\n\n[[rule]]\nmetric = "a"\n\n'
        '[[rule]]\nmetric = "b"\ntreshold = -4.0\n'
    )
    assert error(text) == (
        "rules.toml:9: unknown key 'treshold' in [[rule]] #2 (did you mean 'threshold'?)"
    )


def test_threshold_must_be_a_number() -> None:
    """A string threshold is reported at the key's line with the value as written."""
    text = '[[rule]]\nmetric = "a"\n# comment\nthreshold = "high"\n'
    assert error(text) == "rules.toml:4: 'threshold' must be a number, got \"high\""


def test_boolean_is_not_a_number() -> None:
    """TOML true is refused as a threshold even though Python's bool is an int."""
    assert error('[[rule]]\nmetric = "a"\nthreshold = true\n') == (
        "rules.toml:3: 'threshold' must be a number, got true"
    )


def test_invalid_metric_name() -> None:
    """A metric name outside [a-z0-9_.-] is reported with the allowed characters."""
    assert error('\n\n[[rule]]\nmetric = "Orders!"\n') == (
        "rules.toml:4: invalid metric name 'Orders!' "
        "(allowed: a-z 0-9 _ . -, at most 200 characters)"
    )


def test_upper_case_metric_suggests_lower_case() -> None:
    """A metric name that is only wrong in case suggests the lower-case name."""
    assert "did you mean 'orders.created'?" in error('[[rule]]\nmetric = "Orders.created"\n')


def test_overlong_metric_name() -> None:
    """A 201-character metric name is refused."""
    assert error(f'[[rule]]\nmetric = "{"a" * 201}"\n').startswith(
        "rules.toml:2: invalid metric name"
    )


def test_invalid_glob() -> None:
    """An unclosed '[' in a glob, which could never match, is refused at its line."""
    message = error('[[rule]]\nmetric = "payments.[ab"\n')
    assert message.startswith("rules.toml:2: invalid metric glob 'payments.[ab'")


def test_metric_must_be_a_string() -> None:
    """A numeric metric is reported as the wrong type at its line."""
    assert error("[[rule]]\nmetric = 42\n") == "rules.toml:2: 'metric' must be a string, got 42"


def test_missing_metric() -> None:
    """A [[rule]] without 'metric' is reported at that rule's header line."""
    message = error('[[rule]]\nmetric = "a"\n\n[[rule]]\nseverity = "page"\n')
    assert message.startswith("rules.toml:4: [[rule]] #2 has no 'metric'")


def test_no_rules() -> None:
    """A file without [[rule]] tables says so, naming the file."""
    assert error("# only a comment\n[defaults]\nthreshold = -3.0\n").startswith(
        "rules.toml: no [[rule]] tables"
    )
    assert error("").startswith("rules.toml: no [[rule]] tables")


def test_single_bracket_rule() -> None:
    """[rule] instead of [[rule]] is explained at its line."""
    assert error('\n[rule]\nmetric = "a"\n') == (
        "rules.toml:2: [rule] must be written [[rule]] (two brackets), one table per rule"
    )


def test_bad_severity() -> None:
    """An unknown severity lists the two allowed values."""
    text = '[[rule]]\nmetric = "a"\n' + "\n" * 9 + 'severity = "urgent"\n'
    assert error(text) == 'rules.toml:12: severity must be "page" or "notify", got "urgent"'


def test_severity_case_hint() -> None:
    """A severity wrong only in case suggests the right spelling."""
    assert 'did you mean "page"?' in error('[[rule]]\nmetric = "a"\nseverity = "Page"\n')


@pytest.mark.parametrize("value", ["0", "0.0", "1.5", "+3"])
def test_threshold_at_or_above_zero_is_explained(value: str) -> None:
    """A threshold >= 0 is refused with the reason: it would page on normal traffic."""
    message = error(f'[[rule]]\nmetric = "a"\nthreshold = {value}\n')
    assert message.startswith("rules.toml:3: 'threshold' must be below 0")
    assert "page on normal traffic" in message


@pytest.mark.parametrize("value", ["nan", "-inf", "inf"])
def test_threshold_must_be_finite(value: str) -> None:
    """nan and infinities are refused as thresholds."""
    message = error(f'[[rule]]\nmetric = "a"\nthreshold = {value}\n')
    assert message.startswith("rules.toml:3: 'threshold' must be a finite number")


def test_huge_integer_threshold() -> None:
    """An integer too large for a float is refused, not an OverflowError."""
    message = error(f'[[rule]]\nmetric = "a"\nthreshold = -{"9" * 400}\n')
    assert message.startswith("rules.toml:3: 'threshold' must be a finite number")


def test_min_rate_not_negative() -> None:
    """A negative min_rate in [defaults] is refused at its line."""
    message = error('[defaults]\nmin_rate = -1\n[[rule]]\nmetric = "a"\n')
    assert message.startswith("rules.toml:2: 'min_rate' must be at least 0")


def test_duplicate_exact_metric() -> None:
    """A second exact rule for the same metric points at both lines."""
    text = '[[rule]]\nmetric = "a"\n\n[[rule]]\ndescription = "x"\nmetric = "a"\n'
    assert error(text) == (
        "rules.toml:6: duplicate rule for metric 'a' (first at line 2): "
        "each metric may have only one rule (key 'metric')"
    )


def test_duplicate_glob() -> None:
    """A second rule with the same glob, which could never match, is refused."""
    message = error('[[rule]]\nmetric = "p.*"\n[[rule]]\nmetric = "p.*"\n')
    assert message.startswith("rules.toml:4: duplicate rule for glob 'p.*' (first at line 2)")


def test_unknown_top_level_table() -> None:
    """A misspelt table is reported at its header with the likely name."""
    message = error('[[rule]]\nmetric = "a"\n\n[slak]\nchannel = "#x"\n')
    assert message == "rules.toml:4: unknown table [slak] (did you mean [slack]?)"


def test_unknown_top_level_table_lists_allowed() -> None:
    """An unrelated table name lists the tables a rules file may hold."""
    message = error('[[rule]]\nmetric = "a"\n[database]\nhost = "x"\n')
    assert message == (
        "rules.toml:3: unknown table [database] "
        "(allowed: [defaults], [[rule]], [slack], [pagerduty], [alertmanager], [webhook], "
        "[quiet_hours])"
    )


def test_plural_rules_table() -> None:
    """[[rules]] suggests [[rule]]."""
    assert error('[[rules]]\nmetric = "a"\n') == (
        "rules.toml:1: unknown table [[rules]] (did you mean [[rule]]?)"
    )


def test_setting_at_top_level() -> None:
    """A threshold outside any table says where it belongs."""
    assert error('threshold = -3.0\n[[rule]]\nmetric = "a"\n') == (
        "rules.toml:1: key 'threshold' must be inside [defaults] or a [[rule]], "
        "not at the top level"
    )


def test_metric_in_defaults() -> None:
    """'metric' in [defaults] is reported as belonging in a [[rule]]."""
    assert error('[defaults]\nmetric = "a"\n[[rule]]\nmetric = "a"\n') == (
        "rules.toml:2: key 'metric' belongs in a [[rule]], not in [defaults]"
    )


def test_defaults_as_array_of_tables() -> None:
    """[[defaults]] is explained as a single table."""
    assert error('[[defaults]]\nthreshold = -3.0\n[[rule]]\nmetric = "a"\n') == (
        "rules.toml:1: [defaults] is a single table: write [defaults], not [[defaults]]"
    )


def test_subtable_of_slack_is_unknown_key() -> None:
    """[slack.extra] is reported as an unknown key of [slack] at the subtable's header."""
    message = error('[[rule]]\nmetric = "a"\n[slack]\nchannel = "#x"\n[slack.extra]\nx = 1\n')
    assert message == "rules.toml:5: unknown key 'extra' in [slack]"


def test_bad_urls() -> None:
    """Non-http URLs for Slack and PagerDuty are refused at their lines."""
    assert error('[[rule]]\nmetric = "a"\n[slack]\nbase_url = "ftp://x/"\n').startswith(
        "rules.toml:4: 'base_url' must be an http(s) URL"
    )
    assert error('[[rule]]\nmetric = "a"\n[pagerduty]\nurl = "nowhere"\n').startswith(
        "rules.toml:4: 'url' must be an http(s) URL"
    )


def test_bad_env_variable_name() -> None:
    """token_env must be a variable name."""
    message = error('[[rule]]\nmetric = "a"\n[slack]\ntoken_env = "my token"\n')
    assert message.startswith("rules.toml:4: 'token_env' must name an environment variable")


def test_description_must_be_a_string() -> None:
    """A runbook given as a number is refused at its line."""
    assert error('[[rule]]\nmetric = "a"\nrunbook = 3\n') == (
        "rules.toml:3: 'runbook' must be a string, got 3"
    )


# --- TOML syntax errors ----------------------------------------------------------------


def test_syntax_error_has_line_and_hint() -> None:
    """An unquoted string is reported at the line tomllib gives, with a hint."""
    message = error('[[rule]]\nmetric = "a"\n[slack]\nchannel = #oncall\n')
    assert message.startswith("rules.toml:4: TOML syntax error at column 11: invalid value")
    assert "needs quotes" in message


def test_syntax_error_key_set_twice() -> None:
    """A key set twice in one table is named, at the second line."""
    message = error('[[rule]]\nmetric = "a"\nthreshold = -3\nmetric = "b"\n')
    assert message.startswith("rules.toml:4: TOML syntax error")
    assert "key 'metric' is set twice" in message


def test_syntax_error_rule_declared_twice() -> None:
    """Two [rule] tables suggest the double-bracket form."""
    message = error('[rule]\nmetric = "a"\n[rule]\nmetric = "b"\n')
    assert message.startswith("rules.toml:3: TOML syntax error")
    assert "[[rule]] (two brackets)" in message


def test_syntax_error_at_end_of_document() -> None:
    """An unterminated string at the end of the file is reported at its last line."""
    assert error('[[rule]]\nmetric = "a').startswith("rules.toml:2: TOML syntax error")


def test_deep_nesting_is_a_rules_error() -> None:
    """Arrays nested past Python's recursion limit give a RulesError, not RecursionError."""
    assert "nested too deeply" in error("x = " + "[" * 5000)


# --- the locator: lines despite comments, spacing, quoting, multi-line strings ----------


def test_locator_handles_spacing_comments_and_quoted_keys() -> None:
    """Indented headers, trailing comments and quoted keys still give the key's line."""
    text = '  [[ rule ]]  # first\n  "metric" = "a"  # name\n\n  \'threshold\'   =  "x"\n'
    assert error(text).startswith("rules.toml:4: 'threshold' must be a number")


def test_locator_skips_headers_inside_multiline_strings() -> None:
    """A [[rule]] line inside a multi-line string is not counted as a rule."""
    text = (
        '[[rule]]\nmetric = "a"\ndescription = """\n[[rule]]\nthreshold = 1\n"""\n'
        '[[rule]]\nmetric = "b"\nthreshold = "x"\n'
    )
    assert error(text).startswith("rules.toml:9: 'threshold' must be a number")


def test_locator_skips_lines_inside_multiline_arrays() -> None:
    """Keys inside a multi-line array value are not taken for the table's keys."""
    text = '[[rule]]\nmetric = "a"\nrunbook = [\n  "threshold = 1",\n]\n'
    assert error(text) == "rules.toml:3: 'runbook' must be a string, got an array"


def test_inline_rules_fall_back_to_the_key_line() -> None:
    """Rules written as an inline array are reported at the 'rule =' line."""
    message = error('\nrule = [{metric = "a"}, {metric = "B"}]\n')
    assert message.startswith("rules.toml:2: invalid metric name 'B'")


# --- reading files ---------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is named in the message."""
    path = tmp_path / "nope.toml"
    with pytest.raises(RulesError, match=r"nope\.toml: no such rules file$"):
        load_rules(path, env=NO_ENV)


def test_directory(tmp_path: Path) -> None:
    """A directory given as the rules file is refused by name."""
    with pytest.raises(RulesError, match="is a directory"):
        load_rules(tmp_path, env=NO_ENV)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs file permissions")
def test_unreadable_file(tmp_path: Path) -> None:
    """A file without read permission is reported as such."""
    path = tmp_path / "rules.toml"
    path.write_text('[[rule]]\nmetric = "a"\n')
    path.chmod(0)
    try:
        with pytest.raises(RulesError, match="permission denied"):
            load_rules(path, env=NO_ENV)
    finally:
        path.chmod(0o600)


def test_non_utf8_file(tmp_path: Path) -> None:
    """A Latin-1 byte is reported at its line and column."""
    path = tmp_path / "rules.toml"
    path.write_bytes(b'[[rule]]\nmetric = "a"\ndescription = "caf\xe9"\n')
    with pytest.raises(RulesError) as info:
        load_rules(path, env=NO_ENV)
    assert str(info.value) == (
        f"{path}:3: not UTF-8 text (byte 0xe9 at column 19); save the file as UTF-8"
    )


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    """A UTF-8 byte order mark, as some editors write, does not break parsing."""
    path = tmp_path / "rules.toml"
    path.write_bytes(b'\xef\xbb\xbf[[rule]]\nmetric = "a"\n')
    assert load_rules(str(path), env=NO_ENV).rules[0].metric == "a"


def test_errors_name_the_path_as_given(tmp_path: Path) -> None:
    """Messages from load_rules start with the path the caller passed."""
    path = tmp_path / "r.toml"
    path.write_text('[[rule]]\nmetric = "a"\nseverity = "urgent"\n')
    with pytest.raises(RulesError) as info:
        load_rules(path, env=NO_ENV)
    assert str(info.value).startswith(f"{path}:3: severity")


# --- a good file -----------------------------------------------------------------------


def test_example_file_loads() -> None:
    """The shipped example loads, with defaults applied and secrets from the environment."""
    env = {
        "CLIFFWATCH_SLACK_TOKEN": SECRET,
        "CLIFFWATCH_PAGERDUTY_ROUTING_KEY": "R0UTING",
    }
    rules = load_rules(EXAMPLE, env=env)
    assert rules.path == str(EXAMPLE)
    assert rules.defaults == RuleDefaults("page", -3.0, 0.0)
    orders, signups, payments = rules.rules
    assert orders == Rule(
        "orders.created",
        "page",
        -4.0,
        0.0,
        "Orders placed on the shop",
        "https://wiki.example.com/runbooks/orders",
        orders.line,
    )
    lines = EXAMPLE.read_text().split("\n")
    assert (
        lines[orders.line - 1] == "[[rule]]" and lines[orders.line] == 'metric = "orders.created"'
    )
    assert not orders.is_glob
    assert (signups.severity, signups.threshold, signups.min_rate) == ("notify", -3.0, 0.05)
    assert payments.is_glob and payments.severity == "page"
    assert rules.slack == SlackSettings("#oncall", "https://slack.com/api/", SECRET, None)
    assert rules.pagerduty == PagerDutySettings(
        "https://events.pagerduty.com/v2/enqueue", "shop-prod", "R0UTING"
    )
    assert rules.warnings == ()


def test_defaults_apply_and_rules_override() -> None:
    """Rules take [defaults] for what they leave out and their own values otherwise."""
    rules = parse_rules(
        '[defaults]\nseverity = "notify"\nthreshold = -5\nmin_rate = 1\n'
        '[[rule]]\nmetric = "a"\n[[rule]]\nmetric = "b"\nseverity = "page"\nthreshold = -3.5\n',
        env=NO_ENV,
    )
    a, b = rules.rules
    assert (a.severity, a.threshold, a.min_rate) == ("notify", -5.0, 1.0)
    assert (b.severity, b.threshold, b.min_rate) == ("page", -3.5, 1.0)
    assert isinstance(a.threshold, float)


def test_built_in_defaults() -> None:
    """Without [defaults] a rule pages at -3.0 with min_rate 0."""
    (rule,) = parse_rules('[[rule]]\nmetric = "a"\n', env=NO_ENV).rules
    assert (rule.severity, rule.threshold, rule.min_rate) == ("page", -3.0, 0.0)
    assert rule.line == 1


# --- globs -----------------------------------------------------------------------------


GLOBS = """
[[rule]]
metric = "payments.*"
threshold = -5.0

[[rule]]
metric = "payments.card"

[[rule]]
metric = "pay*"
severity = "notify"

[[rule]]
metric = "signups.[ab]?"
"""


def test_exact_rule_wins_over_earlier_glob() -> None:
    """An exact rule is chosen even when a glob before it also matches."""
    rules = parse_rules(GLOBS, env=NO_ENV)
    assert rules.match("payments.card") is rules.rules[1]


def test_first_glob_in_file_order_wins() -> None:
    """Among globs, the first matching one in the file is chosen."""
    rules = parse_rules(GLOBS, env=NO_ENV)
    assert rules.match("payments.paypal") is rules.rules[0]
    assert rules.match("payouts") is rules.rules[2]
    assert rules.match("signups.a1") is rules.rules[3]
    assert rules.match("signups.c1") is None
    assert rules.match("orders") is None


def test_globs_are_case_sensitive() -> None:
    """A glob does not match a name that differs in case."""
    assert parse_rules(GLOBS, env=NO_ENV).match("Payments.x") is None


def test_metrics_expands_globs_against_known_names() -> None:
    """metrics() lists exact names in file order, then matching known names sorted, once."""
    rules = parse_rules(GLOBS, env=NO_ENV)
    known = ["signups.b2", "orders.created", "payments.card", "payments.amex", "pay", "pay"]
    assert rules.metrics(known) == ["payments.card", "pay", "payments.amex", "signups.b2"]
    assert rules.metrics() == ["payments.card"]


def test_ruleset_built_directly_matches() -> None:
    """A RuleSet built in code indexes its rules like a parsed one."""
    rules = RuleSet(None, (Rule("a.*", "notify", -3.0, 0.0), Rule("a.b", "page", -4.0, 0.0)))
    assert rules.match("a.b") == Rule("a.b", "page", -4.0, 0.0)
    assert rules.match("a.c") == Rule("a.*", "notify", -3.0, 0.0)


def test_default_rules() -> None:
    """default_rules pages on every metric at -3.0, or only on the metrics given."""
    everything = default_rules()
    assert everything.match("anything.at.all") == Rule("*", "page", -3.0, 0.0)
    assert everything.metrics(["b", "a"]) == ["a", "b"]
    assert everything.slack is None and everything.pagerduty is None
    some = default_rules(["orders.created", "signups", "orders.created"])
    assert some.metrics(["other"]) == ["orders.created", "signups"]
    assert some.match("other") is None
    with pytest.raises(RulesError, match="invalid metric name 'Bad!'"):
        default_rules(["Bad!"])


# --- secrets ---------------------------------------------------------------------------


BASE = '[[rule]]\nmetric = "a"\nseverity = "notify"\n'


def test_secrets_come_from_env() -> None:
    """Token, webhook URL and routing key are read from the default variables."""
    env = {
        "CLIFFWATCH_SLACK_TOKEN": SECRET,
        "CLIFFWATCH_SLACK_WEBHOOK_URL": "http://127.0.0.1:9/hook",
        "CLIFFWATCH_PAGERDUTY_ROUTING_KEY": "R0UTING",
    }
    rules = parse_rules(BASE + '[slack]\nchannel = "#x"\n[pagerduty]\n', env=env)
    assert rules.slack is not None and rules.pagerduty is not None
    assert rules.slack.token == SECRET
    assert rules.slack.webhook_url == "http://127.0.0.1:9/hook"
    assert rules.pagerduty.routing_key == "R0UTING"
    assert rules.slack.enabled and rules.pagerduty.enabled


def test_env_variable_names_can_be_renamed() -> None:
    """token_env, webhook_url_env and routing_key_env choose which variables are read."""
    env = {
        "CLIFFWATCH_SLACK_TOKEN": "wrong",
        "MY_TOKEN": SECRET,
        "MY_HOOK": "https://h/x",
        "MY_KEY": "K",
    }
    rules = parse_rules(
        BASE + '[slack]\nchannel = "C012"\ntoken_env = "MY_TOKEN"\nwebhook_url_env = "MY_HOOK"\n'
        '[pagerduty]\nrouting_key_env = "MY_KEY"\n',
        env=env,
    )
    assert rules.slack is not None and rules.pagerduty is not None
    assert (rules.slack.token, rules.slack.webhook_url) == (SECRET, "https://h/x")
    assert rules.slack.token_env == "MY_TOKEN"
    assert rules.pagerduty.routing_key == "K"


def test_empty_env_values_count_as_unset() -> None:
    """A variable set to blanks is treated as missing; surrounding whitespace is stripped."""
    env = {"CLIFFWATCH_SLACK_TOKEN": "  ", "CLIFFWATCH_PAGERDUTY_ROUTING_KEY": " K\n"}
    rules = parse_rules(BASE + "[slack]\n[pagerduty]\n", env=env)
    assert rules.slack is not None and rules.slack.token is None
    assert rules.pagerduty is not None and rules.pagerduty.routing_key == "K"


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without env=, secrets are read from the process environment."""
    monkeypatch.setenv("CLIFFWATCH_PAGERDUTY_ROUTING_KEY", "FROM-ENVIRON")
    rules = parse_rules(BASE + "[pagerduty]\n")
    assert rules.pagerduty is not None and rules.pagerduty.routing_key == "FROM-ENVIRON"


@pytest.mark.parametrize(
    ("table", "key", "variable", "line"),
    [
        ('[slack]\nchannel = "#x"', "token", "CLIFFWATCH_SLACK_TOKEN", 6),
        ("[slack]", "webhook_url", "CLIFFWATCH_SLACK_WEBHOOK_URL", 5),
        ('[slack]\ntoken_env = "MY_TOKEN"', "token", "MY_TOKEN", 6),
        ("[pagerduty]", "routing_key", "CLIFFWATCH_PAGERDUTY_ROUTING_KEY", 5),
        ("[pagerduty]", "password", "CLIFFWATCH_PAGERDUTY_ROUTING_KEY", 5),
        ('[pagerduty]\nrouting_key_env = "PD"', "integration_key", "PD", 6),
    ],
)
def test_secret_in_file_is_refused(table: str, key: str, variable: str, line: int) -> None:
    """A secret written in the file is refused, naming the variable to set, never the value."""
    message = error(f'{BASE}{table}\n{key} = "{SECRET}"\n')
    assert message == (
        f"rules.toml:{line}: key '{key}' in [{table[1 : table.index(']')]}]: secrets are read "
        f"from the environment: set ${variable} and remove '{key}' from the file"
    )
    assert SECRET not in message


def test_secret_in_a_rule_is_refused() -> None:
    """A per-rule routing key is refused the same way."""
    message = error(f'[[rule]]\nmetric = "a"\nrouting_key = "{SECRET}"\n')
    assert message.startswith("rules.toml:3: key 'routing_key' in [[rule]] #1: secrets are read")
    assert SECRET not in message


def test_webhook_url_from_env_must_be_a_url() -> None:
    """A webhook variable that is not a URL is refused without showing its value."""
    message = error(BASE + "[slack]\n", env={"CLIFFWATCH_SLACK_WEBHOOK_URL": SECRET})
    assert "$CLIFFWATCH_SLACK_WEBHOOK_URL must be an http(s) URL" in message
    assert SECRET not in message


def test_token_needs_a_channel() -> None:
    """A Slack token with no channel (and no webhook) is refused: it could post nowhere."""
    message = error(BASE + "\n[slack]\n", env={"CLIFFWATCH_SLACK_TOKEN": SECRET})
    assert message.startswith("rules.toml:5: [slack] needs a 'channel'")


def test_repr_hides_secrets() -> None:
    """Neither the settings nor the rule set show a secret in repr or str."""
    env = {
        "CLIFFWATCH_SLACK_TOKEN": SECRET,
        "CLIFFWATCH_SLACK_WEBHOOK_URL": "https://hooks.example/" + SECRET,
        "CLIFFWATCH_PAGERDUTY_ROUTING_KEY": SECRET + "PD",
    }
    rules = parse_rules(BASE + '[slack]\nchannel = "#x"\n[pagerduty]\n', env=env)
    for shown in (repr(rules), str(rules), repr(rules.slack), repr(rules.pagerduty)):
        assert SECRET not in shown
        assert "<hidden>" in shown
    assert "token=None" in repr(SlackSettings("#x"))


# --- warnings --------------------------------------------------------------------------


def test_warning_page_without_pagerduty_table() -> None:
    """A page rule with no [pagerduty] table warns that it goes to Slack only."""
    rules = parse_rules(
        '[[rule]]\nmetric = "a"\n[slack]\nchannel = "#x"\n',
        "rules.toml",
        env={"CLIFFWATCH_SLACK_TOKEN": SECRET},
    )
    assert rules.warnings == (
        'rules.toml: severity "page" but no [pagerduty] table: alerts for a go to Slack only',
    )


def test_warning_page_without_routing_key() -> None:
    """A [pagerduty] table with no routing key in the environment names the variable."""
    rules = parse_rules('[[rule]]\nmetric = "a"\n[pagerduty]\n', "r.toml", env=NO_ENV)
    assert any(
        'severity "page" but no [pagerduty] routing key in $CLIFFWATCH_PAGERDUTY_ROUTING_KEY' in w
        and "are only logged" in w
        for w in rules.warnings
    )


def test_warning_slack_without_secrets() -> None:
    """A [slack] table with neither token nor webhook URL warns, naming both variables."""
    rules = parse_rules(BASE + '[slack]\nchannel = "#x"\n', "r.toml", env=NO_ENV)
    assert rules.warnings[0] == (
        "r.toml: [slack] is set but neither $CLIFFWATCH_SLACK_TOKEN nor "
        "$CLIFFWATCH_SLACK_WEBHOOK_URL is: nothing will be posted to Slack"
    )
    assert 'severity "notify" but no Slack token or webhook URL' in rules.warnings[1]


def test_warning_lists_at_most_three_metrics() -> None:
    """A warning about many rules names three and counts the rest."""
    text = "".join(f'[[rule]]\nmetric = "m{i}"\nseverity = "notify"\n' for i in range(5))
    (warning,) = parse_rules(text, "r.toml", env=NO_ENV).warnings
    assert warning == (
        'r.toml: severity "notify" but no [slack] table: '
        "alerts for m0, m1, m2 and 2 more are only logged"
    )


def test_no_warnings_when_everything_is_reachable() -> None:
    """Page rules with a routing key and notify rules with a Slack token warn about nothing."""
    text = '[[rule]]\nmetric = "a"\n[[rule]]\nmetric = "b"\nseverity = "notify"\n'
    env = {"CLIFFWATCH_PAGERDUTY_ROUTING_KEY": "K", "CLIFFWATCH_SLACK_TOKEN": SECRET}
    rules = parse_rules(text + '[slack]\nchannel = "#x"\n[pagerduty]\n', env=env)
    assert rules.warnings == ()


# --- fuzzing: only RuleSet or RulesError, ever -----------------------------------------


def parse_or_error(text: str) -> None:
    """Parse ``text``; a RulesError must be one line naming the file, anything else fails."""
    try:
        rules = parse_rules(text, "fuzz.toml", env={"CLIFFWATCH_SLACK_TOKEN": "t"})
    except RulesError as exc:
        message = str(exc)
        assert message.startswith("fuzz.toml"), message
        assert "\n" not in message and "\r" not in message, message
    else:
        assert isinstance(rules, RuleSet) and rules.rules
        for rule in rules.rules:
            assert rules.match(rule.metric) is not None


KEYS = st.sampled_from(
    [
        "metric",
        "severity",
        "threshold",
        "min_rate",
        "description",
        "runbook",
        "channel",
        "base_url",
        "url",
        "source",
        "token",
        "token_env",
        "webhook_url_env",
        "routing_key_env",
        "treshold",
        '"metric"',
        "'threshold'",
        "a.b",
        "password",
        "x",
    ]
)
VALUES = st.one_of(
    st.sampled_from(
        [
            '"orders.created"',
            '"pay*"',
            '"page"',
            '"notify"',
            '"urgent"',
            "-3.0",
            "-4",
            "0",
            "1e400",
            "-1e400",
            "nan",
            "-inf",
            "true",
            "[1, 2]",
            "{ a = 1 }",
            "1979-05-27",
            '"#oncall"',
            '"https://x.example/api"',
            '"MY_VAR"',
            '"""\n[[rule]]\n"""',
            "'''x'''",
            '"a\\nb"',
            "[\n",
            "]",
            "-99999999999999999999999",
        ]
    ),
    st.text(max_size=20).map(lambda s: '"' + s.replace("\\", "").replace('"', "") + '"'),
    st.floats(allow_nan=True, allow_infinity=False).map(repr),
)
HEADERS = st.sampled_from(
    [
        "[[rule]]",
        "[defaults]",
        "[slack]",
        "[pagerduty]",
        "[rule]",
        "[[defaults]]",
        "[slack.extra]",
        "[other]",
        "[[rules]]",
        "  [[ rule ]] # c",
        '["slack"]',
    ]
)
LINES = st.one_of(
    HEADERS,
    st.tuples(KEYS, VALUES).map(lambda kv: f"{kv[0]} = {kv[1]}"),
    st.sampled_from(["", "# comment", "  ", "=", "[", 'metric = "a" # c']),
    st.text(max_size=30),
)


@settings(max_examples=400, deadline=None)
@given(st.text())
def test_fuzz_arbitrary_text(text: str) -> None:
    """Arbitrary text gives a RuleSet or a one-line RulesError, never another exception."""
    parse_or_error(text)


@settings(max_examples=1500, deadline=None)
@given(st.lists(LINES, max_size=25).map("\n".join))
def test_fuzz_toml_like_documents(text: str) -> None:
    """TOML-like documents give a RuleSet or a one-line RulesError, never another exception."""
    parse_or_error(text)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes_on_disk(data: bytes) -> None:
    """Any bytes in a file give a RuleSet or a RulesError from load_rules."""
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "rules.toml"
        path.write_bytes(data)
        try:
            load_rules(path, env=NO_ENV)
        except RulesError as exc:
            assert str(exc).startswith(str(path))


NAMES = st.from_regex(r"[a-z0-9_.\-]{1,30}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(NAMES, st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False)),
        min_size=1,
        max_size=8,
        unique_by=lambda t: t[0],
    )
)
def test_valid_rules_round_trip(rules: list[tuple[str, float]]) -> None:
    """Any valid names and negative thresholds parse back to the same rules, in order."""
    text = "".join(f'[[rule]]\nmetric = "{m}"\nthreshold = {t!r}\n\n' for m, t in rules)
    parsed = parse_rules(text, env=NO_ENV)
    assert [(r.metric, r.threshold) for r in parsed.rules] == rules
    assert [r.line for r in parsed.rules] == [1 + 4 * i for i in range(len(rules))]
    for metric, threshold in rules:
        rule = parsed.match(metric)
        assert rule is not None and rule.threshold == threshold


# --- [quiet_hours], per-rule routes and links ------------------------------------------

QUIET = '[[rule]]\nmetric = "a"\n[quiet_hours]\nstart = "01:00"\nend = "07:00"\n'


def test_quiet_hours_are_parsed() -> None:
    """[quiet_hours] takes "HH:MM" strings or TOML local times and an IANA time zone."""
    rules = parse_rules(QUIET + 'timezone = "Europe/Berlin"\n', "rules.toml", NO_ENV)
    assert rules.quiet_hours is not None
    q = rules.quiet_hours
    assert (q.start.isoformat(), q.end.isoformat(), q.timezone, q.line) == (
        "01:00:00", "07:00:00", "Europe/Berlin", 3)
    local = parse_rules(QUIET.replace('"01:00"', "22:30:00").replace('"07:00"', "06:00:00")
                        + 'timezone = "UTC"\n', "rules.toml", NO_ENV).quiet_hours
    assert local is not None and (local.start.hour, local.start.minute) == (22, 30)
    assert parse_rules('[[rule]]\nmetric = "a"\n', "r", NO_ENV).quiet_hours is None


@pytest.mark.parametrize(("text", "expected"), [
    (QUIET + 'timezone = "Europe/Berlim"\n',
     "rules.toml:6: unknown time zone \"Europe/Berlim\" (did you mean 'Europe/Berlin'?): "
     'use an IANA name like "Europe/Berlin", "America/New_York" or "UTC"'),
    (QUIET + 'timezone = "../../etc/passwd"\n', "rules.toml:6: unknown time zone"),
    (QUIET + "timezone = 3\n", "rules.toml:6: 'timezone' must be a string, got 3"),
    (QUIET.replace('"07:00"', '"7am"') + 'timezone = "UTC"\n',
     "rules.toml:5: 'end' must be a time of day \"HH:MM\" (24-hour, like \"01:00\" or "
     "\"23:30\"), got \"7am\""),
    (QUIET.replace('"01:00"', '"24:00"') + 'timezone = "UTC"\n',
     "rules.toml:4: 'start' must be a time of day"),
    (QUIET.replace('"07:00"', '"01:00"') + 'timezone = "UTC"\n',
     "rules.toml:5: [quiet_hours] 'end' must differ from 'start' (both 01:00)"),
    (QUIET, "rules.toml:3: [quiet_hours] needs 'timezone'"),
    (QUIET + 'timezone = "UTC"\nstop = "x"\n',
     "rules.toml:7: unknown key 'stop' in [quiet_hours]"),
])
def test_quiet_hours_errors_name_the_line_and_value(text: str, expected: str) -> None:
    """Every bad [quiet_hours] value is refused at its line, naming the value."""
    assert error(text).startswith(expected)


def test_quiet_hours_without_a_time_zone_database_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a host where zoneinfo finds no time zone data at all (no system tzdata, no
    tzdata package), the error says to install it instead of calling the name wrong."""
    import zoneinfo

    def missing(key: str) -> None:
        raise zoneinfo.ZoneInfoNotFoundError(f"No time zone found with key {key}")

    monkeypatch.setattr(zoneinfo, "ZoneInfo", missing)
    monkeypatch.setattr(zoneinfo, "available_timezones", set)
    message = error(QUIET + 'timezone = "Europe/Berlin"\n')
    assert message.startswith('rules.toml:6: unknown time zone "Europe/Berlin": this host has '
                              "no time zone database")
    assert "pip install tzdata" in message


ROUTED = """
[[rule]]
metric = "orders.created"
runbook = "https://wiki.example.com/orders"
[[rule]]
metric = "payments.*"
slack_channel = "#payments"
pagerduty = "payments"
dashboard = "https://grafana.example.com/d/pay"
[slack]
channel = "#oncall"
[pagerduty]
runbook = "https://wiki.example.com/all"
dashboard = "https://grafana.example.com/d/all"
[pagerduty.services]
payments = {routing_key_env = "PD_PAYMENTS_KEY", source = "pay-prod"}
"""


def test_rules_route_to_their_own_channel_and_service() -> None:
    """A rule's slack_channel and pagerduty service are kept; the service's key comes from
    its environment variable; links fall back from the rule to [pagerduty]."""
    rules = parse_rules(ROUTED, "rules.toml", {"PD_PAYMENTS_KEY": "PAYKEY"})
    pay = rules.match("payments.captured")
    assert pay is not None and (pay.slack_channel, pay.pagerduty) == ("#payments", "payments")
    assert rules.pagerduty is not None
    service = rules.pagerduty.services["payments"]
    assert (service.routing_key, service.source) == ("PAYKEY", "pay-prod")
    assert "PAYKEY" not in repr(rules.pagerduty)
    assert rules.links("orders.created") == (
        ("https://wiki.example.com/orders", "Runbook"),
        ("https://grafana.example.com/d/all", "Dashboard"))
    assert rules.links("payments.x") == (
        ("https://wiki.example.com/all", "Runbook"),
        ("https://grafana.example.com/d/pay", "Dashboard"))
    warnings = parse_rules(ROUTED, "rules.toml", NO_ENV).warnings
    assert any("'payments' has no routing key in $PD_PAYMENTS_KEY: alerts for payments.* page "
               "nobody" in w for w in warnings), warnings


@pytest.mark.parametrize(("old", "new", "expected"), [
    ('pagerduty = "payments"', 'pagerduty = "payment"',
     "rules.toml:8: unknown PagerDuty service \"payment\" (did you mean 'payments'?): "
     "define it in [pagerduty.services] (payments)"),
    ('slack_channel = "#payments"', 'slack_channel = "#pay ments"',
     "rules.toml:7: 'slack_channel' must be a channel name"),
    ('dashboard = "https://grafana.example.com/d/pay"', 'dashboard = "grafana/d/pay"',
     "rules.toml:9: 'dashboard' must be an http(s) URL, got \"grafana/d/pay\""),
    ('runbook = "https://wiki.example.com/all"', 'runbook = "javascript:alert(1)"',
     "rules.toml:13: 'runbook' must be an http(s) URL"),
    ('{routing_key_env = "PD_PAYMENTS_KEY", source = "pay-prod"}', '{routing_key = "abc"}',
     "rules.toml:16: key 'routing_key' in [pagerduty.services] 'payments': secrets are read"),
    ('{routing_key_env = "PD_PAYMENTS_KEY", source = "pay-prod"}', '{source = "pay-prod"}',
     "rules.toml:16: [pagerduty.services] 'payments' needs 'routing_key_env'"),
    ('{routing_key_env = "PD_PAYMENTS_KEY", source = "pay-prod"}', '"PD_PAYMENTS_KEY"',
     "rules.toml:16: PagerDuty service 'payments' must be a table"),
])
def test_route_and_link_errors_name_the_line_and_value(old: str, new: str, expected: str) -> None:
    """Unknown services, bad channels, non-http links and secrets in a service are refused
    at their lines."""
    assert old in ROUTED
    assert error(ROUTED.replace(old, new)).startswith(expected)


def test_a_rule_channel_needs_a_slack_table() -> None:
    """slack_channel without [slack] (where the token is configured) is an error."""
    assert error('[[rule]]\nmetric = "a"\nslack_channel = "#x"\n').startswith(
        "rules.toml:3: 'slack_channel' \"#x\" needs a [slack] table")
