"""The settings table -> Config: defaults, precedence, syntax, and named errors."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import FUNCTIONS, StartGateway
from tests.test_gateway import fetch, file_appears
from watchdog.config import (
    SETTINGS,
    SETTINGS_BY_FIELD,
    Config,
    ConfigError,
    LegacyValue,
    go_duration,
    parse_duration,
    parse_size,
)

BASE = {"fprocess": "cat"}


def test_defaults_match_the_go_watchdog() -> None:
    config = Config.from_env(BASE)
    assert config.fprocess == ("cat",)
    assert (config.port, config.metrics_port, config.bind_address) == (8080, 8081, "")
    assert (config.read_timeout, config.write_timeout, config.exec_timeout) == (30, 30, 0)
    assert config.max_inflight == 0
    assert config.healthcheck_interval == config.write_timeout
    assert (config.write_debug, config.combine_output, config.marshal_request) == (
        False, True, False)
    assert (config.suppress_lock, config.cgi_headers, config.content_type) == (False, True, "")
    assert config.lock_path == "/tmp/.lock"


def test_precedence_flag_then_watchdog_name_then_openfaas_name() -> None:
    env = {**BASE, "max_inflight": "1", "WATCHDOG_MAX_INFLIGHT": "2"}
    assert Config.from_env({**BASE, "max_inflight": "1"}).max_inflight == 1
    assert Config.from_env(env).max_inflight == 2
    assert Config.from_env(env, {"max_inflight": "3"}).max_inflight == 3


def test_command_after_double_dash_wins_and_is_not_split() -> None:
    config = Config.from_env({"fprocess": "cat"}, command=("sh", "-c", "echo a b"))
    assert config.fprocess == ("sh", "-c", "echo a b")
    # Our own name splits on runs of whitespace (the OpenFaaS fprocess on each space,
    # as the Go watchdog: tests/test_compat_go.py).
    assert Config.from_env({"WATCHDOG_FPROCESS": "python3  index.py"}).fprocess == (
        "python3", "index.py")


def test_empty_variable_counts_as_unset_except_fprocess() -> None:
    assert Config.from_env({**BASE, "WATCHDOG_MAX_INFLIGHT": "", "max_inflight": "4"}
                           ).max_inflight == 4
    with pytest.raises(ConfigError, match=r"fprocess=''"):
        Config.from_env({"fprocess": ""})


def test_healthcheck_interval_follows_write_timeout_unless_set() -> None:
    assert Config.from_env({**BASE, "write_timeout": "1m"}).healthcheck_interval == 60
    assert Config.from_env({**BASE, "write_timeout": "1m",
                            "healthcheck_interval": "5"}).healthcheck_interval == 5
    config = Config.from_env({**BASE, "WATCHDOG_BIND_ADDRESS": "127.0.0.1"})
    assert config.metrics_bind_address == "127.0.0.1"


@pytest.mark.parametrize(("text", "seconds"), [
    ("30", 30), ("0", 0), ("5s", 5), ("1m30s", 90), ("500ms", 0.5), ("1.5h", 5400),
    ("2h45m", 9900), ("100us", 1e-4), (" 7s ", 7),
])
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "size"), [
    ("0", 0), ("512", 512), ("10k", 10_000), ("10Ki", 10_240), ("64Mi", 64 * 2**20),
    ("1GiB", 2**30), ("2 MB", 2_000_000),
])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(("env", "named"), [
    ({"WATCHDOG_MAX_INFLIGHT": "abc"}, "WATCHDOG_MAX_INFLIGHT='abc'"),
    ({"WATCHDOG_MAX_INFLIGHT": "-1"}, "WATCHDOG_MAX_INFLIGHT='-1'"),
    ({"WATCHDOG_MAX_INFLIGHT": "+3"}, "WATCHDOG_MAX_INFLIGHT='+3'"),
    ({"WATCHDOG_EXEC_TIMEOUT": "-5s"}, "WATCHDOG_EXEC_TIMEOUT='-5s'"),
    ({"WATCHDOG_READ_TIMEOUT": "5x"}, "WATCHDOG_READ_TIMEOUT='5x'"),
    ({"WATCHDOG_PORT": "abc"}, "WATCHDOG_PORT='abc'"),
    ({"WATCHDOG_WRITE_DEBUG": "maybe"}, "WATCHDOG_WRITE_DEBUG='maybe'"),
    ({"WATCHDOG_STRICT_CONFIG": "maybe"}, "WATCHDOG_STRICT_CONFIG='maybe'"),
    ({"port": "70000"}, "port='70000'"),  # Go cannot listen on it either
    ({"LOG_LEVEL": "loud"}, "LOG_LEVEL='loud'"),  # OSCAR's name, not the Go watchdog's
    ({"WATCHDOG_MAX_BODY_BYTES": "lots"}, "WATCHDOG_MAX_BODY_BYTES='lots'"),
    ({"WATCHDOG_LOG_LEVEL": "loud"}, "WATCHDOG_LOG_LEVEL='loud'"),
    ({"WATCHDOG_FUNCTION_NICE": "20"}, "WATCHDOG_FUNCTION_NICE='20'"),
    ({"WATCHDOG_FUNCTION_NICE": "-1"}, "WATCHDOG_FUNCTION_NICE='-1'"),
    ({"WATCHDOG_SPAWN_THREADS": "17"}, "WATCHDOG_SPAWN_THREADS='17'"),
    ({"WATCHDOG_SPAWN_THREADS": "one"}, "WATCHDOG_SPAWN_THREADS='one'"),
    ({"WATCHDOG_BIND_ADDRESS": "not an address"}, "WATCHDOG_BIND_ADDRESS='not an address'"),
])
def test_bad_values_name_the_variable_value_and_form(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env({**BASE, **env})
    message = str(caught.value)
    assert message.startswith(named + ": expected ")
    assert "\n" not in message


# Each as the Go classic watchdog (readconfig.go) reads it, and what is used instead.
@pytest.mark.parametrize(("variable", "value", "used", "shown"), [
    ("max_inflight", "abc", 0, "0 (the default)"),
    ("max_inflight", "-1", 0, "0 (the default)"),
    ("max_inflight", "1.5", 0, "0 (the default)"),
    ("max_inflight", "+3", 3, "3"),
    ("port", "abc", 8080, "8080 (the default)"),
    ("port", "-1", 8080, "8080 (the default)"),
    ("port", "+9000", 9000, "9000"),
    ("read_timeout", "-1", 30, "30s (the default)"),  # a negative integer is not seconds
    ("read_timeout", "5x", 30, "30s (the default)"),
    ("read_timeout", "+5", 5, "5s"),
    ("exec_timeout", "1.5", 0, "0s (the default)"),
    ("exec_timeout", "soon", 0, "0s (the default)"),
    ("exec_timeout", "+.5s", 0.5, "0.5s"),
    ("exec_timeout", "-5s", 0, "0s"),  # a negative duration: Go's no limit
    ("write_timeout", "5sec", 30, "30s (the default)"),
    ("healthcheck_interval", "-3", 30, "30s (= write_timeout)"),
    ("write_debug", "maybe", False, "false"),
    ("cgi_headers", "maybe", False, "false"),  # not the default: Go reads it as false
    ("combine_output", "vrai", False, "false"),
    ("marshal_request", "oui", False, "false"),
    ("suppress_lock", "si", False, "false"),
])
def test_a_bad_openfaas_value_is_read_as_go_reads_it_with_a_warning(
        variable: str, value: str, used: float | bool, shown: str) -> None:
    config = Config.from_env({**BASE, variable: value})
    assert getattr(config, variable) == used
    setting = SETTINGS_BY_FIELD[variable]
    assert config.legacy_values == (LegacyValue(variable, value, shown, setting.accepted),)
    with pytest.raises(ConfigError) as caught:
        Config.from_env({**BASE, variable: value, "WATCHDOG_STRICT_CONFIG": "true"})
    assert str(caught.value).startswith(f"{variable}={value!r}: expected {setting.accepted}")


def test_healthcheck_interval_falls_back_to_write_timeouts_value_as_in_go() -> None:
    config = Config.from_env({**BASE, "write_timeout": "2", "healthcheck_interval": "x"})
    assert config.healthcheck_interval == 2
    assert config.legacy_values[0].used == "2s (= write_timeout)"
    config = Config.from_env({**BASE, "write_timeout": "-5s"})  # Go: health -5s, no wait
    assert (config.write_timeout, config.healthcheck_interval) == (0, 0)


@pytest.mark.parametrize(("variable", "value", "used"), [
    ("combine_output", "FALSE", False), ("cgi_headers", "no", False),
    ("write_debug", "On", True), ("suppress_lock", " 1 ", True),
    ("max_inflight", " 4", 4), ("read_timeout", " 7s", 7),
])
def test_a_value_our_form_takes_keeps_its_meaning_without_a_warning(
        variable: str, value: str, used: float | bool) -> None:
    # Where Go differs (it reads FALSE as false but On as false, " 7s" as its default),
    # the documented form wins: these were never a reason to crash-loop.
    config = Config.from_env({**BASE, variable: value})
    assert getattr(config, variable) == used
    assert config.legacy_values == ()


def test_names_that_exist_only_here_stay_strict() -> None:
    with pytest.raises(ConfigError, match=r"^mode='afterburn': expected"):
        Config.from_env({**BASE, "mode": "afterburn"})
    with pytest.raises(ConfigError, match=r"^--max-inflight='abc': expected"):
        Config.from_env(BASE, {"max_inflight": "abc"})


# Checked against the Go binary (classic-watchdog 23db914: its "Timeouts: read: …"
# start-up line for read_timeout=TEXT), 46 texts; these are a cross-section.
@pytest.mark.parametrize(("text", "seconds"), [
    ("30", 30), ("007", 7), ("+5", 5), ("-0", 0), ("-1", None), ("1.5", None),
    ("5sec", None), (" 7s", None), ("7s ", None), ("-5s", 0), ("+.5s", 0.5), ("5.s", 5),
    (".s", None), ("-", None), ("", None), ("1h1h", 7200), ("1h.5m", 3630),
    ("1µs", 1e-6), ("1μs", 1e-6), ("5S", None), ("1e3", None), ("1_000", None),
    ("+-5s", None), ("5m-3s", None), ("\u0663", None), ("2562047h", 2562047 * 3600),
    ("2562048h", None), ("9223372036854775808ns", None), ("99999999999999999999", None),
])
def test_go_reads_durations_as_its_parse_int_or_duration(text: str,
                                                         seconds: float | None) -> None:
    assert go_duration(text) == (None if seconds is None else pytest.approx(seconds))


GO_READ = [s for s in SETTINGS if s.go is not None]


@given(st.text(max_size=20))
def test_any_text_in_a_go_variable_starts_and_warns_exactly_when_strict_refuses(
        text: str) -> None:
    assert {s.variables[-1] for s in GO_READ} == {
        "port", "read_timeout", "write_timeout", "exec_timeout", "healthcheck_interval",
        "max_inflight", "write_debug", "combine_output", "marshal_request", "cgi_headers",
        "suppress_lock", "buffer_http", "prefix_logs", "log_callid"}
    for setting in GO_READ:
        env = {**BASE, setting.variables[-1]: text}
        try:
            config = Config.from_env(env)
        except ConfigError:
            assert setting.field == "port"
            assert int(text) > 65535
            continue
        strict_refuses = False
        try:
            Config.from_env({**env, "WATCHDOG_STRICT_CONFIG": "true"})
        except ConfigError as exc:
            strict_refuses = exc.source == setting.variables[-1]
        assert bool(config.legacy_values) == strict_refuses


def test_missing_fprocess_says_how_to_give_one() -> None:
    with pytest.raises(ConfigError, match=r"no function to run.*after --"):
        Config.from_env({})


def test_a_bad_flag_is_named_as_a_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--exec-timeout='x'"):
        Config.from_env(BASE, {"exec_timeout": "x"})


def test_every_setting_is_a_config_field() -> None:
    derived = {"lock_path", "mode_reason", "oscar_pod", "supervisor", "oscar_defaults",
               "check_token", "legacy_values"}
    fields = set(Config.__dataclass_fields__) - derived
    assert {s.field for s in SETTINGS} == fields


@given(st.text(max_size=20))
def test_any_text_parses_or_gives_the_named_error(text: str) -> None:
    for setting in SETTINGS:
        variable = setting.variables[0]
        error: ConfigError | None = None
        try:
            Config.from_env({**BASE, variable: text})
        except ConfigError as exc:
            error = exc
        if error is not None:
            assert error.source == variable
            assert error.value == ("" if setting.secret else text)


def test_oscar_mode_defaults_to_the_mounted_script_and_reads_a_token_file(
        tmp_path: Path) -> None:
    config = Config.from_env({"WATCHDOG_MODE": "oscar"})
    assert config.fprocess == ("/bin/sh", "/oscar/config/script.sh")
    assert config.service_token == ""
    (tmp_path / "token").write_text("abc123\n")
    config = Config.from_env({"mode": "oscar", "OSCAR_SERVICE_TOKEN_FILE": str(tmp_path / "token"),
                              "LOG_LEVEL": "critical"})
    assert config.service_token == "abc123"
    assert config.log_level == "CRITICAL"
    assert "abc123" not in repr(config)
    assert Config.from_env({**BASE, "OSCAR_SERVICE_TOKEN": "t1",
                            "OSCAR_SERVICE_TOKEN_FILE": str(tmp_path / "token")}
                           ).service_token == "t1"


@pytest.mark.parametrize(("env", "named"), [
    ({"mode": "afterburn"}, "mode='afterburn'"),
    ({"OSCAR_SERVICE_TOKEN_FILE": "/no/such/file"}, "OSCAR_SERVICE_TOKEN_FILE='/no/such/file'"),
    ({"OSCAR_SERVICE_TOKEN": "two words"}, "OSCAR_SERVICE_TOKEN=(hidden): expected"),
    ({"OSCAR_SERVICE_NAME": "a/b"}, "OSCAR_SERVICE_NAME='a/b'"),
])
def test_bad_oscar_settings(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Config.from_env({**BASE, **env})
    assert str(caught.value).startswith(named)


def test_workers_need_fixed_ports_and_at_least_one() -> None:
    assert Config.from_env({**BASE, "WATCHDOG_WORKERS": "2"}).workers == 2
    with pytest.raises(ConfigError, match=r"^WATCHDOG_WORKERS=2: several workers need a fixed"):
        Config.from_env({**BASE, "WATCHDOG_WORKERS": "2", "port": "0"})
    with pytest.raises(ConfigError, match=r"^WATCHDOG_WORKERS='0': expected"):
        Config.from_env({**BASE, "WATCHDOG_WORKERS": "0"})


@pytest.mark.parametrize(("given", "level"), [
    ("NOTSET", "NOTSET"), ("notset", "NOTSET"), ("Debug", "DEBUG"), ("info", "INFO"),
    ("WARN", "WARNING"), ("warning", "WARNING"), ("ERROR", "ERROR"), ("critical", "CRITICAL"),
    ("FATAL", "CRITICAL"), (" fatal ", "CRITICAL"),
])
def test_every_level_name_pythons_logging_knows(given: str, level: str) -> None:
    # OSCAR's FaaS Supervisor takes LOG_LEVEL as such a name; its users set NOTSET.
    assert Config.from_env({**BASE, "LOG_LEVEL": given}).log_level == level


async def test_log_level_notset_starts_and_writes_everything(gateway: StartGateway,
                                                             tmp_path: Path) -> None:
    gw = gateway(["/bin/sh", str(FUNCTIONS / "sleeper.sh")],
                 env={"LOG_LEVEL": "NOTSET", "WATCHDOG_MAX_INFLIGHT": "1",
                      "PIDS_DIR": str(tmp_path), "SLEEP": "30"})
    running = asyncio.ensure_future(fetch("POST", gw.url, b""))
    try:
        await file_appears(tmp_path / "child")  # the only slot is taken
        assert (await fetch("POST", gw.url, b""))[0] == 429
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    # As at DEBUG: each rejection has its own line (at INFO they are summed up).
    assert "msg=request method=POST path=/ status=429" in gw.log()
