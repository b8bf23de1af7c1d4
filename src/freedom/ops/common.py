"""What the operations modules share, below them all: times as ISO 8601, the listened topics of a
consumer client, and the names of the dead-letter jobs' consumer groups.

`freedom dlq replay` and `freedom dlq purge` keep their progress as the committed offsets of a
consumer group of their own (a *job*), named under :data:`JOB_PREFIX`, so that the one ACL on
`freedom-replay.*` covers both (docs/operations.md).
"""

from __future__ import annotations

import datetime

from freedom.ops.cluster import Cluster
from freedom.ops.target import ClientTarget

#: The consumer groups of the dead-letter jobs: `freedom-replay.<fail-topic>[.<filter hash>]` for
#: `freedom dlq replay`, `freedom-replay.<fail-topic>.purge[.<filter>]` for `freedom dlq purge`.
JOB_PREFIX = "freedom-replay."


def iso(ts: float) -> str:
    """A UTC time as ISO 8601 with milliseconds and `Z`."""
    return (
        datetime.datetime.fromtimestamp(ts, datetime.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def main_topics(client: ClientTarget, cluster: Cluster) -> list[str]:
    """The listened topics: the application's, else those the groups have committed offsets on."""
    if client.topics is not None:
        return list(client.topics)
    cc = client.config
    found = {t for t, _ in cluster.committed(cc.group_id)}
    if cc.retry_count > 0:
        found |= {
            t[len(cc.retry_prefix) :]
            for t, _ in cluster.committed(cc.retry_group_id)
            if t.startswith(cc.retry_prefix)
        }
    return sorted(found)
