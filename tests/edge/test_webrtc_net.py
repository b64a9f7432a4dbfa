"""The WebRTC door's networks: a call through a real TURN server (coturn), the calls' UDP
ports held to --rtc-ports, ending a call by its id (`POST /v1/realtime/calls/{id}/hangup`),
and the network flags checked at start."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioice import stun
from aiortc import RTCConfiguration, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from bench import rtc_client
from bench.rtc_client import Client
from server import cli
from server.edge.webrtc import NO_FREE_PORT
from server.runtime import config
from server.runtime.engines import Engines
from tests.edge.test_webrtc import KEY, connect, post, serving

TURN_USER, TURN_PASSWORD = "u", "p"


def free_udp_ports(count: int) -> int:
    """The first of ``count`` consecutive UDP ports free on 127.0.0.1, below the ephemeral
    range (where the test clients' own sockets land)."""
    for _ in range(100):
        low = random.randrange(20000, 32000 - count)
        sockets: list[socket.socket] = []
        try:
            for port in range(low, low + count):
                sockets.append(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
                sockets[-1].bind(("127.0.0.1", port))
            return low
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
    raise AssertionError("no free UDP ports found")


def bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def answers_stun(port: int) -> bool:
    """Whether a STUN server answers a binding request on 127.0.0.1:``port``."""
    request = stun.Message(stun.Method.BINDING, stun.Class.REQUEST)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.2)
        try:
            sock.sendto(bytes(request), ("127.0.0.1", port))
            return stun.parse_message(sock.recv(2048)).transaction_id == \
                request.transaction_id
        except OSError:
            return False


@pytest.fixture
def turn(tmp_path: Path) -> Iterator[str]:
    """A TURN server (coturn) on 127.0.0.1 with the static user u:p: its turn: URL."""
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.fail("the relay test needs coturn's turnserver: run `make sysdeps` (or "
                    "apt-get install coturn)")
    port = free_udp_ports(1)
    log = tmp_path / "turnserver.log"
    server = subprocess.Popen(
        [binary, "-n", "--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1",
         "--listening-port", str(port), "--user", f"{TURN_USER}:{TURN_PASSWORD}",
         "--lt-cred-mech", "--realm", "voxwire", "--allow-loopback-peers", "--no-tls",
         "--no-dtls", "--no-cli", "--log-file", str(log), "--simple-log", "--no-stdout-log",
         "--userdb", str(tmp_path / "turndb"), "--pidfile", str(tmp_path / "turnserver.pid")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not answers_stun(port):
            if server.poll() is not None or time.monotonic() > deadline:
                text = log.read_text(errors="replace") if log.exists() else ""
                pytest.fail(f"turnserver did not start (exit {server.poll()}):\n{text[-2000:]}")
        yield f"turn:127.0.0.1:{port}?transport=udp"
    finally:
        server.kill()
        server.wait()


def host_ports(sdp: bytes) -> list[int]:
    """The ports of an SDP's host candidates."""
    return [int(line.split()[5]) for line in sdp.decode().splitlines()
            if line.startswith("a=candidate:") and " typ host" in line]


def nominated(pc: RTCPeerConnection) -> tuple[str, str]:
    """The types of the local and remote candidates of the pair ICE nominated."""
    pair = pc.getTransceivers()[0].sender.transport.transport._connection._nominated[1]
    return pair.local_candidate.type, pair.remote_candidate.type


# ---------------------------------------------------------------------------- the tests


async def test_a_call_goes_through_the_turn_relay(engines: Engines, turn: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    servers = [{"urls": [turn], "username": TURN_USER, "credential": TURN_PASSWORD}]
    # The caller may use relayed candidates only: its media goes through coturn.
    monkeypatch.setattr(rtc_client, "peer", lambda: RTCPeerConnection(RTCConfiguration(
        iceServers=[RTCIceServer(turn, TURN_USER, TURN_PASSWORD)],
        iceTransportPolicy=RTCIceTransportPolicy.RELAY)))
    async with serving(engines, ice_servers=json.dumps(servers)) as (app, base):
        client, (status, headers, answer) = await connect(base)
        try:
            assert status == 201, answer
            call = app.webrtc.calls[headers["Location"].rsplit("/", 1)[1]]
            caller_side, server_side = nominated(client.pc), nominated(call.pc)
        finally:
            await client.close()
    assert client.events[0]["type"] == "session.created"  # over the relayed data channel
    assert caller_side[0] == "relay" and server_side[1] == "relay"
    lines = [line for line in answer.decode().splitlines() if line.startswith("a=candidate:")]
    # The server's own relayed candidate (from --ice-servers), its host ones where it listens.
    assert any(" typ relay " in line for line in lines)
    assert all(" 127.0.0.1 " in line for line in lines if " typ host" in line)


async def test_the_calls_ports_stay_in_the_range(engines: Engines) -> None:
    low = free_udp_ports(2)
    # Another test's call may still be open on this loop (until its server notices that
    # its peer vanished): count the tasks this test starts.
    before = asyncio.all_tasks()
    async with serving(engines, rtc_ports=f"{low}-{low + 1}") as (app, base):
        calls: list[Client] = []
        try:
            for _ in range(2):
                client, (status, _, answer) = await connect(base)
                calls.append(client)
                assert status == 201
                ports = host_ports(answer)
                assert ports and all(low <= port <= low + 1 for port in ports), ports
            # A third call finds every port of the range taken: refused, nothing kept.
            client, (status, _, body) = await connect(base)
            await client.close()
            error = json.loads(body)["error"]
            assert (status, error["code"]) == (503, NO_FREE_PORT)
            assert f"no free UDP port in the range {low}-{low + 1}" in error["message"]
            assert len(app.sessions) == 2 and len(app.webrtc.calls) == 2
            listening = [t for t in asyncio.all_tasks() - before
                         if t.get_name().startswith("microphone ")]
            assert len(listening) == 2, listening  # none for the refused call
        finally:
            for client in calls:
                await client.close()
        for _ in range(100):  # the callers left: their calls end
            if not app.sessions and not app.webrtc.calls:
                break
            await asyncio.sleep(0.1)
        assert not app.sessions and not app.webrtc.calls
        assert bindable(low) and bindable(low + 1)  # every socket of the range closed
        client, (status, _, answer) = await connect(base)  # and a port is free again
        await client.close()
        assert status == 201 and all(low <= port <= low + 1 for port in host_ports(answer))


async def test_hangup_ends_a_live_call(engines: Engines) -> None:
    async with serving(engines) as (app, base):
        client, (status, headers, _) = await connect(base)
        try:
            assert status == 201
            call_id = headers["Location"].rsplit("/", 1)[1]
            hangup = f"{base}/v1/realtime/calls/{call_id}/hangup"
            sideband = await ws_connect(
                base.replace("http://", "ws://") + f"/v1/realtime?call_id={call_id}",
                additional_headers={"Authorization": f"Bearer {KEY}"})
            # Refused: no key, or a browser token (a backend hangs up, with the API key).
            status, _, body = await post(hangup, b"", key=None)
            assert (status, json.loads(body)["error"]["code"]) == (401, "invalid_api_key")
            _, _, minted = await post(base + "/v1/realtime/client_secrets", b"{}",
                                      content_type="application/json")
            status, _, _ = await post(hangup, b"", key=json.loads(minted)["value"])
            assert status == 401
            status, _, body = await post(f"{base}/v1/realtime/calls/rtc_unknown/hangup", b"")
            assert (status, json.loads(body)["error"]["code"]) == (404, "call_not_found")
            assert call_id in app.webrtc.calls and len(app.sessions) == 1
            status, _, body = await post(hangup, b"")
            assert (status, body) == (200, b"")
            # Answered once the call has ended: its session closed, its sideband with 1000.
            assert not app.sessions and call_id not in app.webrtc.calls
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(sideband.recv(), 10)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
            for _ in range(100):  # the caller hears the call end (DTLS close_notify)
                if client.pc.connectionState == "closed":
                    break
                await asyncio.sleep(0.1)
            assert client.pc.connectionState == "closed"
            assert client.channel.readyState == "closed"
            status, _, body = await post(hangup, b"")
            assert (status, json.loads(body)["error"]["code"]) == (404, "call_not_found")
        finally:
            await client.close()


@pytest.mark.parametrize(("flag", "value", "said"), [
    ("--ice-servers", "[{urls: stun:x}]", "--ice-servers (VOXWIRE_ICE_SERVERS) is not JSON"),
    ("--ice-servers", '{"urls": "stun:x"}', "must be a JSON array"),
    ("--ice-servers", '[{"urls": "sip:turn.example.com"}]', "has the scheme 'sip'"),
    ("--ice-servers", '[{"urls": ["stun:s.example.com", "turn:t.example.com:3478"]}]',
     "'turn:t.example.com:3478' needs a \"username\" and a \"credential\""),
    ("--rtc-ports", "40100-40000", "--rtc-ports must be LOW-HIGH"),
    ("--rtc-ports", "40000", "--rtc-ports must be LOW-HIGH"),
])
def test_bad_network_flags_stop_the_server_at_start(flag: str, value: str, said: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", flag, value]) == 2
    assert said in capsys.readouterr().err


def test_ice_servers_come_from_the_environment() -> None:
    servers = [{"urls": "turn:turn.example.com:3478?transport=udp", "username": "u",
                "credential": "secret-password"}]
    settings = config.from_sources(env={"VOXWIRE_ICE_SERVERS": json.dumps(servers),
                                        "VOXWIRE_RTC_PORTS": "40000-40100"})
    assert config.ice_servers(settings.ice_servers) == (config.IceServer(
        ("turn:turn.example.com:3478?transport=udp",), "u", "secret-password"),)
    assert config.port_range(settings.rtc_ports) == range(40000, 40101)
    assert "secret-password" not in repr(settings)
