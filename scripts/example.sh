#!/usr/bin/env bash
# The seed's shop/store example on the embedded broker: sets up .venv, starts the service,
# buys three goods and shows the store handler logging each purchase.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/shop/demo.py "$@"
