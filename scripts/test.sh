#!/usr/bin/env bash
# The whole test suite: sets up .venv, fetches the Apache Kafka jars (first run only) and runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "test: fetching Apache Kafka jars from Maven Central (cached in .cache/kafka-jars)" >&2
.venv/bin/python -m tests.kafka.broker --fetch-only
echo "test: making sure a PostgreSQL server is installed (for the outbox tests)" >&2
bash scripts/postgres.sh install
echo "test: making sure the AsyncAPI parser is installed (npm, cached in .cache/npm)" >&2
bash scripts/npm-tools.sh
bash scripts/chromium.sh  # Debian's chromium, for the web console's browser test (tests/test_console.py)
if [ "$#" -gt 0 ]; then
    exec .venv/bin/python -m pytest "$@"  # the tests you name, in one process
fi
# The whole suite in two phases. Most tests wait on brokers, subprocesses and sockets far more than
# they compute: two workers (each with its own brokers) halve the time on two cores. The tests
# marked `serial` measure timing (commit lag bounds, SIGKILL accounting, broker failover): they run
# afterwards, alone, so a neighbour's load cannot blur what they measure.
status=0
.venv/bin/python -m pytest -n 2 --dist loadfile -m "not serial" || status=$?
.venv/bin/python -m pytest -p no:xdist -m serial || status=$?
exit "$status"
