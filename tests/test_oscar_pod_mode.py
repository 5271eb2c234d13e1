"""OSCAR's own pod, emulated: OSCAR's environment as `pkg/types/service.go` writes
it, its paths under a temporary root (WATCHDOG_OSCAR_ROOT), and a stand-in for
the FaaS Supervisor at `fprocess` that is a real shell script recording what it
was given, so that what is handed over to it can be seen."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import stat
from pathlib import Path

import aiohttp

from tests.conftest import Gateway, StartGateway
from watchdog.config import Config

TOKEN = "5f4dcc3b5aa765d61d8327deb882cf99" * 2  # a service token, as OSCAR makes them
# An OIDC access token's shape (header.payload.signature): the manager accepts it,
# the pod cannot check it.
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyQGVnaS5ldSJ9.c2lnbmF0dXJlLW5vdC1jaGVja2Vk"

SUPERVISOR = """#!/bin/sh
# Stand-in for OSCAR's FaaS Supervisor: records its stdin and environment.
cat > "$RECORD/stdin"
env > "$RECORD/env"
echo "supervisor log line" >&2
[ -n "$SUPERVISOR_SLEEP" ] && sleep "$SUPERVISOR_SLEEP"
echo "answer from the supervisor"
"""

SCRIPT = """echo "script ran"
env
if [ -n "$INPUT_FILE_PATH" ]; then echo "input:"; cat "$INPUT_FILE_PATH"; echo; fi
"""

MINIO_EVENT = {
    "EventName": "s3:ObjectCreated:Put",
    "Key": "images/cat.png",
    "Records": [{
        "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "",
        "eventTime": "2026-12-01T10:23:44Z", "eventName": "s3:ObjectCreated:Put",
        "s3": {"bucket": {"name": "images"}, "object": {"key": "cat.png", "size": 7}},
    }],
}


def make_pod(tmp_path: Path, *, script: str | None = SCRIPT, fdl: str | None = None,
             mounted: bool = True) -> Path:
    root = tmp_path / "root"
    (root / "oscar" / "bin" / "alpine").mkdir(parents=True)
    supervisor = root / "oscar" / "bin" / "supervisor"
    supervisor.write_text(SUPERVISOR)
    supervisor.chmod(supervisor.stat().st_mode | stat.S_IXUSR)
    if mounted:
        (root / "oscar" / "config").mkdir()
        if script is not None:
            (root / "oscar" / "config" / "script.sh").write_text(script)
        if fdl is not None:
            (root / "oscar" / "config" / "function_config.yaml").write_text(fdl)
    (tmp_path / "record").mkdir()
    return root


def pod_env(root: Path, **extra: str) -> dict[str, str]:
    """OSCAR's pod environment, in its order (the user's variables first)."""
    return {
        **extra,
        "fprocess": str(root / "oscar" / "bin" / "supervisor"),
        "max_inflight": "1", "write_debug": "true", "exec_timeout": "0",
        "read_timeout": "300", "write_timeout": "300", "healthcheck_interval": "0",
        "OSCAR_SERVICE_NAME": "svc", "OSCAR_SERVICE_TOKEN": TOKEN,
        "OSCAR_SERVICE_BASE_PATH": "/system/services/svc/exposed",
        "WATCHDOG_OSCAR_ROOT": str(root),
        "RECORD": str(root.parent / "record"),
    }


def recorded(root: Path) -> tuple[bytes, dict[str, str]] | None:
    """What the stand-in supervisor was given, or None if it never ran."""
    record = root.parent / "record"
    if not (record / "env").exists():
        return None
    env = dict(line.split("=", 1) for line in (record / "env").read_text().splitlines()
               if "=" in line)
    return (record / "stdin").read_bytes(), env


def script_env(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


async def post(gw: Gateway, body: bytes | str, authorization: str | None = f"Bearer {TOKEN}",
               path: str = "/") -> tuple[int, str, dict[str, str]]:
    headers = {"Authorization": authorization} if authorization else {}
    async with aiohttp.ClientSession() as session, session.post(
            gw.url + path, data=body, headers=headers) as response:
        return response.status, await response.text(), dict(response.headers)


# --- mode ---------------------------------------------------------------------------------


async def test_oscars_pod_means_oscar_mode_named_in_the_start_line(
        gateway: StartGateway, tmp_path: Path) -> None:
    root = make_pod(tmp_path)
    gw = gateway([], env=pod_env(root))
    config = root / "oscar" / "config"
    assert (f'mode=oscar reason="fprocess is OSCAR\'s supervisor and {config} is mounted"'
            in gw.log())
    status, text, _ = await post(gw, base64.b64encode(b"hello"))
    assert status == 200, text
    assert text.startswith("script ran\n")
    assert text.rstrip().endswith("input:\nhello")
    assert recorded(root) is None  # the script ran as the supervisor runs it, without it


async def test_without_the_config_mount_and_when_forced_classic_the_supervisor_is_forked(
        gateway: StartGateway, tmp_path: Path) -> None:
    root = make_pod(tmp_path)
    forced = gateway([], env=pod_env(root, WATCHDOG_MODE="classic"))
    assert 'mode=classic reason="mode is set to classic' in forced.log()
    status, text, _ = await post(forced, b"abc")
    assert (status, text) == (200, "supervisor log line\nanswer from the supervisor\n")
    assert recorded(root) == (b"abc", recorded(root)[1])  # type: ignore[index]

    bare = make_pod(tmp_path / "bare", mounted=False)
    gw = gateway([], env=pod_env(bare))
    assert "mode=classic reason=\"fprocess is OSCAR's supervisor but" in gw.log()


async def test_mode_oscar_with_the_supervisor_as_fprocess_runs_the_script(
        gateway: StartGateway, tmp_path: Path) -> None:
    root = make_pod(tmp_path)
    gw = gateway([], env=pod_env(root, WATCHDOG_MODE="oscar"))
    status, text, _ = await post(gw, base64.b64encode(b"x"))
    assert status == 200, text
    assert text.startswith("script ran\n")
    assert recorded(root) is None


# --- trust ---------------------------------------------------------------------------------


async def test_in_the_pod_every_call_the_manager_proxies_is_served(
        gateway: StartGateway, tmp_path: Path) -> None:
    root = make_pod(tmp_path)
    gw = gateway([], env=pod_env(root, WATCHDOG_MODE="oscar"))
    for authorization in (f"Bearer {JWT}", f"Bearer {TOKEN}"):
        status, text, _ = await post(gw, b"", authorization)
        assert status == 200, (authorization, text)
        assert text.startswith("script ran\n")


async def test_a_token_check_in_the_pod_only_when_asked(gateway: StartGateway,
                                                        tmp_path: Path) -> None:
    root = make_pod(tmp_path)
    gw = gateway([], env=pod_env(root, WATCHDOG_OSCAR_CHECK_TOKEN="true"))
    assert (await post(gw, b"", f"Bearer {JWT}"))[0] == 401
    assert (await post(gw, b"", None))[0] == 401
    status, text, _ = await post(gw, b"", f"Bearer {TOKEN}")
    assert status == 200, text
    assert text.startswith("script ran\n")


async def test_the_script_sees_the_supervisors_environment(gateway: StartGateway,
                                                           tmp_path: Path) -> None:
    root = make_pod(tmp_path)
    gw = gateway([], env=pod_env(root, USER_VARIABLE="mine"))
    status, text, _ = await post(gw, b"", f"Bearer {JWT}", path="/?a=1")
    assert status == 200, text
    env = script_env(text)
    assert env["OSCAR_SERVICE_TOKEN"] == TOKEN  # scripts call other services with it
    assert env["Http_Authorization"] == f"Bearer {JWT}"
    assert env["OSCAR_SERVICE_NAME"] == "svc"
    assert env["OSCAR_SERVICE_BASE_PATH"] == "/system/services/svc/exposed"
    assert env["USER_VARIABLE"] == "mine"
    assert env["Http_Method"] == "POST"
    assert env["Http_Query"] == "a=1"
    assert os.path.basename(env["INPUT_FILE_PATH"]).startswith("event-file-")
    assert {"TMP_INPUT_DIR", "TMP_OUTPUT_DIR"} <= set(env)


async def test_standalone_keeps_the_check_and_never_passes_the_token_files_path(
        gateway: StartGateway, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    (tmp_path / "script.sh").write_text(SCRIPT)
    gw = gateway([], env={"WATCHDOG_MODE": "oscar", "fprocess": f"/bin/sh {tmp_path}/script.sh",
                          "OSCAR_SERVICE_TOKEN_FILE": str(token_file)})
    assert (await post(gw, b"", f"Bearer {JWT}"))[0] == 401
    status, text, _ = await post(gw, b"")
    assert status == 200, text
    assert str(token_file) not in text
    assert TOKEN not in text
    assert "OSCAR_SERVICE_TOKEN_FILE" not in script_env(text)


# --- what the supervisor did, done natively ------------------------------------------------


async def test_an_api_gateway_event_gives_its_body_and_query_parameters(
        gateway: StartGateway, tmp_path: Path) -> None:
    root = make_pod(tmp_path)
    gw = gateway([], env=pod_env(root))
    event = {"httpMethod": "POST", "path": "/launch", "isBase64Encoded": False,
             "headers": {"Content-Type": "application/octet-stream"},
             "queryStringParameters": {"size": "3", "mode": "fast", "empty": ""},
             "body": base64.b64encode(b"image bytes").decode()}
    status, text, _ = await post(gw, json.dumps(event))
    assert status == 200, text
    env = script_env(text)
    assert env["CONT_VAR_size"] == "3"
    assert env["CONT_VAR_mode"] == "fast"
    assert "CONT_VAR_empty" not in env  # the supervisor skips empty values
    assert text.rstrip().endswith("input:\nimage bytes")
    assert recorded(root) is None
    # A JSON body is the input as it is.
    status, text, _ = await post(gw, json.dumps({**event, "body": '{"k": [1, 2]}'}))
    assert status == 200, text
    assert text.rstrip().endswith('input:\n{"k": [1, 2]}')
    # Strict base64, as for any body: 400 and the script never runs.
    status, text, _ = await post(gw, json.dumps({**event, "body": "not base64!"}))
    assert status == 400, text
    assert text.startswith("API-Gateway event's body: Body is not valid base64")


async def test_file_stage_in_means_no_input_file(gateway: StartGateway, tmp_path: Path) -> None:
    root = make_pod(tmp_path, fdl="name: svc\nfile_stage_in: true\noutput: []\n")
    gw = gateway([], env=pod_env(root))
    status, text, _ = await post(gw, "not base64 at all: the script fetches its own input")
    assert status == 200, text
    env = script_env(text)
    assert "INPUT_FILE_PATH" not in env
    assert "TMP_INPUT_DIR" in env
    assert recorded(root) is None


async def test_script_and_function_config_variables(gateway: StartGateway,
                                                    tmp_path: Path) -> None:
    root = make_pod(tmp_path, script=None)  # no script.sh, no function_config.yaml
    encoded_script = base64.b64encode(b'echo "from SCRIPT"\n' + SCRIPT.encode()).decode()
    encoded_fdl = base64.b64encode(b"file_stage_in: true\n").decode()
    gw = gateway([], env=pod_env(root, SCRIPT=encoded_script, FUNCTION_CONFIG=encoded_fdl))
    status, text, _ = await post(gw, b"anything")
    assert status == 200, text
    assert text.startswith("from SCRIPT\nscript ran\n")
    assert "INPUT_FILE_PATH" not in script_env(text)


# --- handed over to the supervisor -----------------------------------------------------------


async def test_a_storage_event_is_handed_over_with_the_same_body(
        gateway: StartGateway, tmp_path: Path) -> None:
    root = make_pod(tmp_path)
    gw = gateway([], env=pod_env(root))
    body = json.dumps(MINIO_EVENT, indent=1).encode()  # spacing the supervisor must see
    status, text, headers = await post(gw, body, f"Bearer {JWT}", path="/?x=1")
    assert status == 200, text
    assert text == "answer from the supervisor\n"  # its stdout; its log is not the answer
    assert headers["X-Watchdog-Output"] == "supervisor"
    seen = recorded(root)
    assert seen is not None
    stdin, env = seen
    assert stdin == body
    assert env["Http_Authorization"] == f"Bearer {JWT}"
    assert env["Http_Query"] == "x=1"
    assert env["OSCAR_SERVICE_TOKEN"] == TOKEN
    assert "INPUT_FILE_PATH" not in env  # the supervisor makes its own
    assert "supervisor log line" in gw.log()


async def test_delegated_events_and_services_with_outputs_are_handed_over(
        gateway: StartGateway, tmp_path: Path) -> None:
    root = make_pod(tmp_path)
    gw = gateway([], env=pod_env(root))
    delegated = json.dumps({"event": MINIO_EVENT, "storage_provider": "minio.other"}).encode()
    assert (await post(gw, delegated))[1] == "answer from the supervisor\n"
    assert recorded(root) == (delegated, recorded(root)[1])  # type: ignore[index]

    uploads = make_pod(tmp_path / "uploads", fdl=(
        "name: svc\noutput:\n- storage_provider: minio.default\n  path: svc/out\n"))
    gw = gateway([], env=pod_env(uploads))
    body = base64.b64encode(b"plain input, uploads by the supervisor")
    status, text, headers = await post(gw, body)
    assert (status, text, headers["X-Watchdog-Output"]) == (
        200, "answer from the supervisor\n", "supervisor")
    assert recorded(uploads) == (body, recorded(uploads)[1])  # type: ignore[index]


async def test_the_hand_over_is_under_the_gateways_deadlines(gateway: StartGateway,
                                                             tmp_path: Path) -> None:
    root = make_pod(tmp_path)
    gw = gateway([], env={**pod_env(root, SUPERVISOR_SLEEP="30"), "write_timeout": "1"})
    status, text, _ = await post(gw, json.dumps(MINIO_EVENT))
    assert status == 504, text
    assert recorded(root) is not None
    # Its group was ended and its slot (max_inflight=1) given back: the next call,
    # plain input, is the script's.
    for _ in range(50):
        status, text, _ = await post(gw, base64.b64encode(b"next"))
        if status != 429:
            break
        await asyncio.sleep(0.1)
    assert status == 200, text
    assert text.startswith("script ran\n")


async def test_always_200_as_the_supervisor(gateway: StartGateway, tmp_path: Path) -> None:
    failing = 'echo "partial result"\nexit 3\n'
    root = make_pod(tmp_path, script=failing)
    gw = gateway([], env=pod_env(root))
    status, text, _ = await post(gw, b"")
    assert (status, text) == (500, "exit status 3\npartial result\n")
    lenient = make_pod(tmp_path / "lenient", script=failing)
    gw = gateway([], env=pod_env(lenient, WATCHDOG_OSCAR_ALWAYS_200="true"))
    status, text, _ = await post(gw, b"")
    assert (status, text) == (200, "partial result\n")


async def test_an_fdl_update_is_seen_by_the_next_call(gateway: StartGateway,
                                                      tmp_path: Path) -> None:
    root = make_pod(tmp_path, fdl="name: svc\noutput: []\n")
    gw = gateway([], env=pod_env(root))
    assert (await post(gw, base64.b64encode(b"a")))[1].startswith("script ran\n")
    # As a ConfigMap update: a new file swapped in.
    fdl = root / "oscar" / "config" / "function_config.yaml"
    new = fdl.with_name("new.yaml")
    new.write_text("name: svc\noutput:\n- storage_provider: s3.default\n  path: out\n")
    new.replace(fdl)
    assert (await post(gw, base64.b64encode(b"a")))[1] == "answer from the supervisor\n"


def test_the_fdls_log_level_can_only_make_the_log_more_verbose(tmp_path: Path) -> None:
    root = make_pod(tmp_path, fdl="log_level: DEBUG\n")
    env = pod_env(root)
    assert Config.from_env(env).log_level == "DEBUG"
    assert Config.from_env({**env, "LOG_LEVEL": "ERROR"}).log_level == "ERROR"
    (root / "oscar" / "config" / "function_config.yaml").write_text("log_level: CRITICAL\n")
    assert Config.from_env(env).log_level == "INFO"  # it kept logs out of answers: done


async def test_a_large_document_that_may_be_an_event_is_not_parsed_but_handed_over(
        gateway: StartGateway, tmp_path: Path) -> None:
    # json.loads holds the GIL wherever it runs: millions of small values in two
    # containers (`{"httpMethod":…,"a":[0.5,…]}`) would stall every connection.
    root = make_pod(tmp_path)
    gw = gateway([], env=pod_env(root))
    body = b'{"httpMethod":"POST","body":"","a":[' + b"0.5," * 100_000 + b'0.5]}'
    status, text, headers = await post(gw, body)
    assert status == 200, text
    assert headers["X-Watchdog-Output"] == "supervisor"
    seen = recorded(root)
    assert seen is not None
    assert seen[0] == body


async def test_an_fdl_that_breaks_the_yaml_parser_costs_no_slot(gateway: StartGateway,
                                                                tmp_path: Path) -> None:
    # Nested deeper than PyYAML's recursion goes: unreadable, so handed over, and
    # with OSCAR's max_inflight=1 the next call still finds its slot.
    root = make_pod(tmp_path, fdl="a: " + "[" * 5000 + "]" * 5000 + "\n")
    gw = gateway([], env=pod_env(root))
    for _ in range(3):
        status, text, headers = await post(gw, base64.b64encode(b"hi"))
        assert status == 200, text
        assert headers["X-Watchdog-Output"] == "supervisor"
