"""The set-up scripts (scripts/*.sh) wait for the dpkg lock another apt or dpkg holds instead of
failing with "Unable to acquire the dpkg frontend lock" (issue 20, point 9c)."""

from __future__ import annotations

import re
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
#: apt-get run as a command: at the start of a line, or after `;`, `&&`, `||`, `|`, `then`, `do`.
COMMAND = re.compile(r"(?:^|[;&|]\s*|\b(?:then|do|sudo)\s+)apt-get\b(?P<rest>.*)$")


def test_every_apt_get_of_the_scripts_waits_for_the_dpkg_lock():
    runs = []
    for script in sorted(SCRIPTS.glob("*.sh")):
        for number, line in enumerate(script.read_text().splitlines(), 1):
            code = line.strip()
            if code.startswith("#") or code.startswith("echo"):
                continue
            if (m := COMMAND.search(code)) is not None:
                runs.append((f"{script.name}:{number}", m.group("rest")))
    assert runs, "no apt-get in scripts/*.sh: this test looks for the wrong thing"
    missing = [where for where, rest in runs if "-o DPkg::Lock::Timeout=600" not in rest]
    assert missing == [], f"apt-get without -o DPkg::Lock::Timeout=600 at {', '.join(missing)}"
