"""One module per scenario; each exposes `cases(ctx) -> list[Case]`.

The runner interleaves every case of every selected scenario within each run, so that freedom and
its peers see the same machine load and their ratios hold on a noisy machine.
"""

from . import e2e, gopeer, latency, memory, metrics, publish, retry, scaling, share

SCENARIOS = {
    "e2e": e2e,
    "latency": latency,
    "publish": publish,
    "retry": retry,
    "memory": memory,
    "metrics": metrics,
    "scaling": scaling,
    "go": gopeer,
    "share": share,
}
