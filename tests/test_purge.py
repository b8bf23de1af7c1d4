"""`freedom dlq purge` on Apache Kafka (docs/operations.md, "freedom dlq purge"): a filtered subset
of the dead letters is purged (a dry run first, which changes nothing); `dlq list`, `dlq show`,
`status` and a later `dlq replay` then leave the purged records out and keep the others; a purge
killed midway, with its transaction open, and run again purges each record once."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from typing import Any

from freedom.ops.dlq import Filter, list_dead_letters
from freedom.ops.purged import purge_filter, purge_group
from freedom.ops.replay import who
from freedom.ops.target import config_target
from freedom.testing import kafka_config, wait_until, write_config
from tests.services.event_app import Journal, event_service
from tests.services.kafka_tools import committed, create_topic, partitions_of, produce, topic_size
from tests.test_ops import ROOT, failing_service, freedom, replays, settled

KEEP = [f"K{i}" for i in range(6)]  # answered 500: kept, replayed later
GONE = [f"G{i}" for i in range(4)]  # answered 503: purged


def test_a_filtered_purge_leaves_out_its_records_and_a_replay_resends_only_the_others(
    apache_kafka, tmp_path
):
    bootstrap = apache_kafka.bootstrap
    topic = create_topic(bootstrap, f"purge-{uuid.uuid4().hex[:8]}", partitions=2)
    fail = create_topic(bootstrap, f"fail-{topic}", partitions=2)
    journal = Journal()
    state = {"fail": True}

    def handler(call: Any) -> int:
        if not state["fail"]:
            return 200
        return 503 if call.key.startswith("G") else 500

    svc = event_service(
        tmp_path,
        bootstrap,
        journal,
        topic,
        handler,
        retry_count=1,
        retry_interval_sec=0.2,
        initial_offset="earliest",
    )
    conf = ["--config", str(tmp_path)]
    job = purge_group(fail, Filter(grep="503"))
    with svc:
        cc = svc.app.kafka_config.consumer_clients[0]
        keys = [k for pair in zip(KEEP, GONE + ["", ""]) for k in pair if k]  # interleaved
        produce(bootstrap, topic, [{"key": k.encode(), "value": b"{}"} for k in keys])
        wait_until(lambda: topic_size(bootstrap, fail, 2) == 10, 60, what="10 dead letters")
        wait_until(
            lambda: settled(
                bootstrap,
                cc.retry_group_id,
                f"retry-{topic}",
                partitions_of(bootstrap, f"retry-{topic}"),
            ),
            30,
            what="the retry group to commit",
        )

        # The dry run lists what would be purged, and changes nothing.
        dry = freedom("dlq", "purge", fail, "--grep", "503", "--dry-run", *conf, cwd=tmp_path)
        assert dry.returncode == 0, dry.stderr
        lines = dry.stdout.splitlines()
        assert lines[0] == (
            f"{fail} (job {job}): would purge 4, already purged 0, not matching 6"
        ), dry.stdout
        assert sorted(line.split(" key ")[1].split()[0] for line in lines[1:5]) == GONE
        assert all(f"(from {topic}; HTTP 503)" in line for line in lines[1:5]), dry.stdout
        assert lines[5].startswith(f"audit: dlq purge dry run by {who()} at "), dry.stdout
        assert (
            '; filter {"grep": "503"}; would purge 4, already purged 0, not matching 6; '
            in (lines[5])
        )
        assert committed(bootstrap, job, fail, 2) == [-1001, -1001]
        assert list_dead_letters(config_target(str(tmp_path)), fail)[0].records == 10

        # The purge itself: the same counts, and the audit line.
        done = freedom("dlq", "purge", topic, "--grep", "503", *conf, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(
            f"{fail} (job {job}): purged 4, already purged 0, not matching 6\n"
        ), done.stdout
        [audit] = [line for line in done.stdout.splitlines() if line.startswith("audit: ")]
        assert audit.startswith(f"audit: dlq purge by {who()} at "), audit
        assert f"topics {fail} (job {job}); filter " in audit and "purged 4," in audit

        # `dlq list` and `dlq show` no longer show them; `status` does not count them as waiting.
        listed = freedom("dlq", "list", fail, *conf, cwd=tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert listed.stdout.splitlines()[0] == f"{fail}: 6 dead letters (4 purged: not listed)"
        assert "HTTP 503" not in listed.stdout and "HTTP 500" in listed.stdout
        shown = freedom("dlq", "show", fail, "--json", *conf, cwd=tmp_path)
        assert sorted(d["key"] for d in json.loads(shown.stdout)) == KEEP
        status = freedom("status", "--json", *conf, cwd=tmp_path)
        [client] = json.loads(status.stdout)["clients"]
        assert client["dead_letters"] == [
            {"topic": fail, "original_topic": topic, "records": 10, "not_replayed": 6}
        ]
        again = freedom("dlq", "purge", fail, "--grep", "503", *conf, cwd=tmp_path)
        assert f"{fail} (job {job}): purged 0, already purged 0, not matching 0" in again.stdout

        # The handler is fixed: a replay of the topic resends the others, not the purged ones.
        state["fail"] = False
        calls = len(journal.of())
        replayed = freedom("dlq", "replay", fail, *conf, cwd=tmp_path)
        assert replayed.returncode == 0, replayed.stderr
        assert (
            f"moved 6 ({6} to {topic}), parked 0, not matching 0, already purged 4"
            in replayed.stdout
        ), replayed.stdout
        assert "not matching 0, already purged 4; max replays 3" in replayed.stdout
        wait_until(lambda: len(replays(journal)) >= 6, 60, what="the six replays delivered")
        wait_until(lambda: settled(bootstrap, cc.group_id, topic, 2), 30, what="their commit")
        assert Counter(c.key for c in replays(journal)) == Counter(KEEP)
        assert len(journal.of()) - calls == 6
        status = freedom("status", "--json", *conf, cwd=tmp_path)
        [client] = json.loads(status.stdout)["clients"]
        assert client["dead_letters"][0]["not_replayed"] == 0


PAUSE = """
import sys
from freedom.cli.main import main
from freedom.ops import jobs

real, commits = jobs.Job._call, []


def call(self, fn, *args):
    # Stop in the second transaction, its offsets sent, just before it commits: the worst moment.
    if getattr(fn, "__name__", "") == "commit_transaction":
        commits.append(fn)
        if len(commits) == 2:
            print("paused", flush=True)
            sys.stdin.readline()  # until killed
    return real(self, fn, *args)


jobs.Job._call = call
sys.exit(main(sys.argv[1:]))
"""


def test_a_purge_killed_midway_and_run_again_purges_each_record_once(apache_kafka, tmp_path):
    bootstrap = apache_kafka.bootstrap
    topic = create_topic(bootstrap, f"purge-{uuid.uuid4().hex[:8]}", partitions=2)
    fail = create_topic(bootstrap, f"fail-{topic}", partitions=2)
    keys = [f"KILL{i}" for i in range(12)]
    svc, journal, state = failing_service(tmp_path, bootstrap, topic, keys)
    conf = ["--config", str(tmp_path)]
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", PAUSE, "dlq", "purge", fail, *conf],
            cwd=tmp_path,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        )
        try:
            assert proc.stdout is not None
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                line = pool.submit(proc.stdout.readline).result(120)
            assert line == "paused\n", line + proc.stdout.read()
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        assert proc.returncode == -signal.SIGKILL

        # What the killed run committed is purged; its open transaction's offsets are not.
        target = config_target(str(tmp_path))
        [partway] = list_dead_letters(target, fail)
        assert 1 <= partway.purged < len(keys) and partway.records == len(keys) - partway.purged

        again = freedom("dlq", "purge", fail, *conf, cwd=tmp_path)
        assert again.returncode == 0, again.stderr
        assert (
            f"purged {len(keys) - partway.purged}, already purged 0, not matching 0" in again.stdout
        ), again.stdout
        [after] = list_dead_letters(target, fail)
        assert (after.records, after.purged) == (0, len(keys))

        # Nothing is left to replay: the replay resends none of them.
        state["fail"] = False
        calls = len(journal.of())
        replayed = freedom("dlq", "replay", fail, *conf, cwd=tmp_path)
        assert replayed.returncode == 0, replayed.stderr
        assert f"moved 0, parked 0, not matching 0, already purged {len(keys)}" in replayed.stdout
        status = freedom("status", "--json", *conf, cwd=tmp_path)
        assert json.loads(status.stdout)["clients"][0]["dead_letters"][0]["not_replayed"] == 0
        assert len(journal.of()) == calls and replays(journal) == []
    finally:
        svc.__exit__(None, None, None)


def test_a_purge_jobs_name_gives_back_its_filter_exactly():
    flt = Filter(
        key="order-\\u202e7",
        since=1796670973.123456,  # not rounded to the millisecond, as the audit line shows it
        until=1796670999.5,
        grep="HTTP 503",
        partition=1,
        offsets=(3, None),
    )
    group = purge_group("fail-orders", flt)
    assert group.startswith("freedom-replay.fail-orders.purge.")
    assert purge_filter(group, "fail-orders") == flt
    assert purge_group("fail-orders", Filter()) == "freedom-replay.fail-orders.purge"
    assert purge_filter("freedom-replay.fail-orders.purge", "fail-orders") == Filter()
    # Not a purge of this topic: another topic's, a replay job's, a name that does not decode.
    for other in (
        purge_group("fail-other", flt),
        "freedom-replay.fail-orders",
        "freedom-replay.fail-orders.3fa2c01b9e",
        "freedom-replay.fail-orders.purge.!!!",
        "freedom-replay.fail-orders.purge.e30",  # {}
    ):
        assert purge_filter(other, "fail-orders") is None, other


def test_purge_mistakes_are_one_line_and_exit_2(apache_kafka, tmp_path):
    bootstrap = apache_kafka.bootstrap
    topic = create_topic(bootstrap, f"purge-{uuid.uuid4().hex[:8]}")
    create_topic(bootstrap, f"fail-{topic}")
    write_config(tmp_path, kafka=kafka_config(bootstrap, 1, retry_count=1))
    conf = ["--config", str(tmp_path)]
    for args, message in [
        (["nope-nothing"], "unknown dead-letter topic 'nope-nothing'"),
        ([f"fail-{topic}", "--until", "someday"], "--until: not an ISO 8601 time: 'someday'"),
        ([f"fail-{topic}", "--offsets", "9-3"], "--offsets: the range '9-3' is empty"),
        ([f"fail-{topic}", "--key", "k" * 1000], "the filter is too long for a purge"),
    ]:
        done = freedom("dlq", "purge", *args, *conf, cwd=tmp_path)
        assert done.returncode == 2 and message in done.stderr, done
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
