"""Three `voxwire serve` processes on one PostgreSQL behind Debian's nginx
(deploy/nginx/voxwire.conf): twelve `openai` SDK clients hold text conversations through
nginx; one replica is killed (SIGKILL) with an answer in flight and another stopped
(SIGTERM) with an answer in flight; their clients resume elsewhere with their conversations,
and nobody else notices. The harness is bench/replicas.py's (`python -m bench.replicas`
runs it longer)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import pytest

from bench import replicas as bench
from tests.runtime.test_store_pg import Postgres, postgres  # noqa: F401  (a fixture)
from tests.support import wire_check

FIRST_ANSWER_BOUND_S = 60.0  # loss to first answer after resuming, on a busy machine
WHOLE_BOUND_S = 240.0  # starting the replicas included
GRACE_S = 15.0


def test_nginx_site_is_filled_in() -> None:
    site = bench.nginx_site(bench.SITE.read_text(), ["127.0.0.1:1", "127.0.0.1:2"],
                            "127.0.0.1:9")
    assert "server 127.0.0.1:1 max_fails=1 fail_timeout=10s;" in site
    assert "server 127.0.0.1:2 max_fails=1 fail_timeout=10s;" in site
    assert "10.0.0." not in site and "listen 127.0.0.1:9;" in site
    assert "proxy_next_upstream error timeout http_502 http_503;" in site
    assert "client_max_body_size 64k;" in site


# The events of all twelve clients are checked against the SDK's models here, across
# reconnections, rather than by the autouse fixture.


@pytest.mark.foreign_events
def test_replicas_behind_nginx_lose_one_and_drain_one(
        postgres: Postgres, tmp_path: Path,  # noqa: F811
        record_property: pytest.RecordProperty) -> None:
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").is_file():
        pytest.fail("nginx is not installed: `make sysdeps` installs Debian's nginx")
    started = time.monotonic()
    plan = bench.Plan(clients=12, replicas=3, hold_s=2.0, think_s=2.0)
    # Answers on this machine take seconds (one LLM thread, a replica's clients queued behind
    # each other): a grace period that lets one in flight at SIGTERM finish.
    with bench.fleet(postgres.new_database(), plan.replicas, tmp_path, grace_s=GRACE_S) as f:
        try:
            with wire_check.watching() as found:
                out = asyncio.run(bench.scenario(f, plan))
        except BaseException:
            print(f.logs())
            raise
        logs = f.logs()
    figures = bench.summary(out)
    report = {k: v for k, v in figures.items() if k != "resumed"}
    print(json.dumps(report, indent=2))
    record_property("replicas", json.dumps(report))
    context = f"{json.dumps(figures, indent=2)}\n{logs}"
    by_n = {c.n: c for c in out.clients}
    assert found == [], context

    # The three replicas shared the clients; a killed one and a drained one had some, one
    # of them waiting for an answer at that moment.
    killed, drained = out.killed, out.drained
    assert killed is not None and drained is not None, context
    assert killed.replica != drained.replica, context
    assert killed.clients and killed.in_flight, context
    assert drained.clients and drained.in_flight, context
    assert drained.exit == 0, context
    # Nothing failed anywhere: no error event, no failed turn, no refused resume.
    assert figures["failures"] == [], context
    assert "failed" not in figures["statuses"], context
    # The killed replica's clients lost their connection (no close frame), resumed on
    # another replica as the same session, with every answered turn restored, and went on.
    for n in killed.clients:
        first = by_n[n].resumes[0]
        assert first.code in (None, 1006), context
        assert first.replica_after not in ("", killed.replica), context
        assert first.missing == [] and first.answered_before >= 1, context
        assert first.restored >= 2 * first.answered_before, context
        assert first.first_answer_s is not None, context
    # The drained replica's client with an answer in flight got it whole, then 1012; a
    # turn it started while the replica drained may have been answered (a slow machine
    # drains for longer) or cancelled (and asked again after resuming), never failed.
    for n in drained.in_flight:
        after = [what for at, what in by_n[n].timeline if at > drained.at]
        assert after[0] in ("done completed", "done incomplete"), (after, context)
        closed = after.index("closed 1012")
        assert set(after[1:closed]) <= {"done cancelled", "done completed",
                                        "done incomplete"}, (after, context)
    for n in drained.clients:
        resumed = [r for r in by_n[n].resumes if r.code == 1012]
        assert len(resumed) == 1 and resumed[0].missing == [], context
        assert resumed[0].replica_after not in ("", killed.replica, drained.replica), context
        # before the drain, the kill went unnoticed unless this client was on the killed one
        assert len(by_n[n].resumes) == 1 + (n in killed.clients), context
    # Everyone else never noticed: no disconnect, and their turns went on throughout.
    assert figures["unexpected_disconnects"] == 0, context
    assert figures["turns_lost"] == 0 and figures["resumes_unanswered"] == 0, context
    for c in out.clients:
        if c.n not in killed.clients and c.n not in drained.clients:
            during = [at for at, what in c.timeline if what.startswith("done ")
                      and killed.at < at < drained.at]
            assert during, (c.n, context)
    # A token minted on one replica opened one session on another, once.
    assert out.token["minted_on"] != out.token["used_on"], context
    assert out.token["first"] == "session.created" and out.token["second"] == 401, context
    # How long a resumed client waited, from its loss to its first answer.
    firsts = figures["reconnect_to_first_answer_s"]["each"]
    assert firsts and max(firsts) < FIRST_ANSWER_BOUND_S, context
    assert time.monotonic() - started < WHOLE_BOUND_S, context
