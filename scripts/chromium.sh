#!/usr/bin/env bash
# Debian's Chromium for the web console's browser test (tests/test_console.py drives it with
# Playwright from PyPI, at /usr/bin/chromium: no browser download of Playwright's own).
# Installs it with apt-get only when /usr/bin/chromium is missing; needs root for that. apt-get
# waits up to 10 minutes for the dpkg lock another apt or dpkg holds (DPkg::Lock::Timeout).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "chromium.sh: /usr/bin/chromium is missing and this is not root: install Debian's chromium package" \
         "(apt-get install chromium); the console's browser test will be skipped" >&2
    exit 0
fi
echo "chromium.sh: installing Debian's chromium (apt-get install chromium)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=600 update -q >&2
apt-get -o DPkg::Lock::Timeout=600 install -y -q --no-install-recommends chromium >&2
