"""The freedom benchmark suite: `bash scripts/bench.sh` (or `python -m bench --help`)."""
