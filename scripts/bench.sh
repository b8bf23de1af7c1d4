#!/usr/bin/env bash
# The benchmark suite: sets up .venv (with the bench extra), fetches the Apache Kafka jars (first run
# only), then runs `python -m bench` with the arguments given, e.g. --quick, --only e2e, --profile.
# It starts its own broker, builds the Go peer (bench/go_peer) when Go is installed (a skip line
# otherwise), and writes BENCHMARKS.md (quick mode: bench/results/quick.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
stamp=.venv/.freedom-bench-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bench: installing the bench and fast extras (FastStream, psutil, py-spy, pyinstrument, uvloop) into .venv" >&2
  .venv/bin/python -m pip install -q -e '.[test,bench,fast]'
  touch "$stamp"
fi
.venv/bin/python -m tests.kafka.broker --fetch-only
export FREEDOM_BENCH_LAUNCHER="bash scripts/bench.sh"
exec .venv/bin/python -m bench "$@"
