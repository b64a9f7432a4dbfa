"""The Containerfile built with podman and run as deploy/k8s runs it (API keys required,
listening beyond loopback, as the unprivileged user): ready on /readyz, a spoken turn through
it with the `openai` SDK, then SIGTERM draining and a clean exit. Skipped where podman is not
installed, and unless asked for (`make test-container`: it takes minutes). Machine-specific
podman options come from the environment:
VOXWIRE_PODMAN_BUILD_ARGS (a base image with no registry at hand, a proxy's CA: see the
Containerfile) and VOXWIRE_PODMAN_RUN_ARGS (say, --runtime runc)."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
from openai import AsyncOpenAI

from client.realtime import Float32
from tests.conftest import ANSWERED
from tests.deploy.conftest import DEPLOY, get
from tests.e2e.test_e2e import METRICS, RATE, audio_of, spoken_turn
from tests.runtime.test_store import free_port

IMAGE = os.environ.get("VOXWIRE_IMAGE", "localhost/voxwire:test")
KEY = "sk-voxwire-container"
BUILD_S = 1200  # a first build compiles llama-cpp-python; later ones reuse the layers
START_S = 180


def podman() -> str:
    if os.environ.get("VOXWIRE_CONTAINER_TEST") != "1":
        pytest.skip("building the image takes about 5 minutes and 2.25 GB: `make "
                    "test-container` runs it (VOXWIRE_CONTAINER_TEST=1)")
    found = shutil.which("podman")
    if found is None:
        pytest.skip("podman is not installed (apt-get install podman): the image is not "
                    "built or run here")
    return found


def run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


@pytest_asyncio.fixture(scope="module")
async def container() -> AsyncIterator[tuple[str, str]]:
    """The image built from this tree and started; its URL on loopback and its name."""
    binary = podman()
    build = await asyncio.to_thread(run, [
        binary, "build", "--format", "docker", "-t", IMAGE, "-f",
        str(DEPLOY.parent / "Containerfile"),
        *shlex.split(os.environ.get("VOXWIRE_PODMAN_BUILD_ARGS", "")), str(DEPLOY.parent)],
        BUILD_S)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    port, name = free_port(), f"voxwire-test-{os.getpid()}"
    started = await asyncio.to_thread(run, [
        binary, "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8765",
        "-e", f"VOXWIRE_API_KEYS={KEY}",
        *shlex.split(os.environ.get("VOXWIRE_PODMAN_RUN_ARGS", "")), IMAGE], 60)
    assert started.returncode == 0, started.stderr[-3000:]
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_S
        status = 0
        while time.monotonic() < deadline and status != 200:
            await asyncio.sleep(1)
            try:
                status, _ = await get(url + "/readyz")
            except OSError:
                status = 0
        if status != 200:
            logs = await asyncio.to_thread(run, [binary, "logs", name], 30)
            pytest.fail(f"the container was not ready in {START_S} s:\n{logs.stderr[-3000:]}")
        yield url, name
    finally:
        await asyncio.to_thread(run, [binary, "rm", "-f", "-t", "0", name], 60)


@pytest.mark.timeout(BUILD_S + START_S + 120)
async def test_the_image_answers_a_spoken_turn_and_drains_on_sigterm(
        container: tuple[str, str], speak: Callable[..., Float32]) -> None:
    url, name = container
    binary = podman()
    assert (await get(url + "/livez"))[0] == 200
    user = await asyncio.to_thread(run, [binary, "exec", name, "id", "-u"], 30)
    assert user.stdout.strip() == "10001"
    client = AsyncOpenAI(api_key=KEY, base_url=f"{url}/v1")
    async with client.realtime.connect(model="voxwire", extra_query=METRICS) as conn:
        events = await spoken_turn(conn, speak("What is the capital of France?", rate=RATE))
    assert events[-1].status in ANSWERED, events[-1]
    assert len(audio_of(events)) > RATE // 2  # half a second of spoken answer at least
    assert (await get(url + "/metrics"))[0] == 401  # keys are required beyond loopback
    assert (await get(url + "/readyz"))[0] == 200
    # podman stop sends the image's STOPSIGNAL (SIGTERM): the server drains and exits 0.
    stopped = await asyncio.to_thread(run, [binary, "stop", "-t", "20", name], 60)
    assert stopped.returncode == 0, stopped.stderr
    state = await asyncio.to_thread(
        run, [binary, "inspect", name, "--format", "{{json .State}}"], 30)
    assert json.loads(state.stdout)["ExitCode"] == 0
    logs = await asyncio.to_thread(run, [binary, "logs", name], 30)
    assert "draining" in logs.stdout + logs.stderr
