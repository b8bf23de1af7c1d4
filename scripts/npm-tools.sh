#!/usr/bin/env bash
# Node tools the test suite runs: the official AsyncAPI parser (@asyncapi/parser), which
# tests/test_asyncapi.py validates freedom's AsyncAPI documents with. Installed from the npm
# registry into .cache/npm, once: nothing happens when the pinned version is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PARSER_VERSION="3.6.6"
installed=".cache/npm/node_modules/@asyncapi/parser/package.json"
if [ -f "$installed" ] && grep -q "\"version\": \"$PARSER_VERSION\"" "$installed"; then
    exit 0
fi
if ! command -v npm >/dev/null; then
    echo "npm-tools: npm (Node.js) is not installed; the AsyncAPI validation test will be skipped" >&2
    exit 0
fi
echo "npm-tools: installing @asyncapi/parser@$PARSER_VERSION into .cache/npm" >&2
mkdir -p .cache/npm
npm install --prefix .cache/npm --no-audit --no-fund --loglevel=error "@asyncapi/parser@$PARSER_VERSION" >&2
