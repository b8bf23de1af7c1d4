"""A three-node Apache Kafka cluster (KRaft, each node broker+controller) on loopback, for tests.

Three child JVMs from the same Maven Central jars as ``broker.py``, each with its own free ports,
data and log in one temporary directory. The controller quorum is static
(``controller.quorum.voters`` names all three), so each node is formatted on its own with the
same cluster id and no ``--standalone``. Topics get three replicas and ``min.insync.replicas=2``:
one node may die without losing an acknowledged record or refusing ``acks=all`` producers.

Timeouts are short so that a SIGKILLed partition leader is replaced within seconds: the
controllers fence a broker that missed heartbeats for ``broker.session.timeout.ms`` and elect a
new leader from the in-sync replicas (never an out-of-sync one: no unclean election).

Run ``python -m tests.kafka.cluster`` (from the project root) to start one by hand; it prints the bootstrap address.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from confluent_kafka import ElectionType, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.kafka.broker import (
    DEFAULT_JVM_FLAGS,
    LOG4J2_PROPERTIES,
    SHARE_GROUP_PROPERTIES,
    KafkaBrokerError,
    _die_with_parent,
    ensure_jars,
    free_port,
    random_cluster_id,
    tail,
)

NODE_IDS = (1, 2, 3)

#: broker.py's flags with a smaller heap: three JVMs share two cores and the other tests' memory.
CLUSTER_JVM_FLAGS: tuple[str, ...] = (
    "-Xmx256m",
    *(f for f in DEFAULT_JVM_FLAGS if not f.startswith("-Xmx")),
    "-XX:CICompilerCount=1",
)

#: The one thread that spawns the JVMs; it lives as long as the test process, and so do they.
_LAUNCHER = ThreadPoolExecutor(1, thread_name_prefix="kafka-cluster-launcher")

#: How long after a SIGKILL the controllers wait before fencing the broker (and moving its leaders).
SESSION_TIMEOUT_MS = 3000


class KafkaClusterError(KafkaBrokerError):
    """The test cluster could not be started, or did not reach the state a test waits for."""


@dataclass
class Node:
    """One JVM of the cluster: broker and controller with node id ``node_id``."""

    node_id: int
    work_dir: Path
    port: int  # PLAINTEXT (clients and replication)
    controller_port: int
    proc: subprocess.Popen[bytes] | None = None
    formatted: bool = False

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.work_dir / "broker.log"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.proc is not None
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass


class KafkaCluster:
    """Three-node Apache Kafka on 127.0.0.1; context manager.

    ``extra_properties`` are added to / override every node's server.properties.
    """

    def __init__(
        self,
        *,
        extra_properties: Mapping[str, str] | None = None,
        jvm_flags: Sequence[str] = CLUSTER_JVM_FLAGS,
        start_timeout: float = 150.0,
        jars: Path | None = None,
    ) -> None:
        self.extra_properties = dict(extra_properties or {})
        self.jvm_flags = list(jvm_flags)
        self.start_timeout = start_timeout
        self._jars = jars
        self.work_dir = Path(tempfile.mkdtemp(prefix="freedom-kafka-cluster-")).resolve()
        self.cluster_id = random_cluster_id()
        self.nodes: dict[int, Node] = {
            n: Node(n, self.work_dir / f"node{n}", free_port(), free_port()) for n in NODE_IDS
        }
        self.start_seconds: float | None = None
        self._admin: AdminClient | None = None
        atexit.register(self.stop)

    # -- addresses -----------------------------------------------------
    @property
    def servers(self) -> list[str]:
        """Every node's ``127.0.0.1:PORT`` (a `servers` list for kafka.toml)."""
        return [node.address for node in self.nodes.values()]

    @property
    def bootstrap(self) -> str:
        """``bootstrap.servers`` naming all three nodes."""
        return ",".join(self.servers)

    def admin(self) -> AdminClient:
        """The cluster's admin client (one, reused: each new librdkafka client costs threads and connections)."""
        if self._admin is None:
            self._admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        return self._admin

    # -- config --------------------------------------------------------
    def server_properties(self, node: Node) -> dict[str, str]:
        """The full server.properties of ``node``."""
        listeners = f"PLAINTEXT://{node.address},CONTROLLER://127.0.0.1:{node.controller_port}"
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes.values())
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": listeners,
            "advertised.listeners": listeners,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(node.work_dir / "data"),
            "auto.create.topics.enable": "true",
            "num.partitions": "1",
            "default.replication.factor": "3",
            "min.insync.replicas": "2",
            "unclean.leader.election.enable": "false",
            "offsets.topic.replication.factor": "3",
            "offsets.topic.num.partitions": "1",  # one group coordinator: the test knows which node
            "transaction.state.log.replication.factor": "3",
            "transaction.state.log.min.isr": "2",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "3",
            "share.coordinator.state.topic.min.isr": "2",
            "share.coordinator.state.topic.num.partitions": "1",
            "group.initial.rebalance.delay.ms": "0",
            **SHARE_GROUP_PROPERTIES,
            # Failover within seconds: a dead broker is fenced after the session timeout (default 9 s)
            # and its partitions get a new leader; a dead active controller is replaced after the
            # fetch timeout plus a random part of the election timeout.
            "broker.session.timeout.ms": str(SESSION_TIMEOUT_MS),
            "broker.heartbeat.interval.ms": "500",
            "controller.quorum.fetch.timeout.ms": "2000",
            "controller.quorum.election.timeout.ms": "1000",
            # A follower that stops fetching leaves the ISR after 10 s (default 30 s). Shorter risks
            # a busy machine (two cores, three JVMs) shrinking the ISR below min.insync.replicas.
            "replica.lag.time.max.ms": "10000",
            # Leaders stay where failover put them: the test decides when leadership moves.
            "auto.leader.rebalance.enable": "false",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "background.threads": "2",
            "log.cleaner.enable": "false",
        }
        props.update(self.extra_properties)
        return props

    def _write_config(self, node: Node) -> Path:
        node.work_dir.mkdir(parents=True, exist_ok=True)
        path = node.work_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in self.server_properties(node).items()))
        (node.work_dir / "log4j2.properties").write_text(LOG4J2_PROPERTIES)
        return path

    def _java(self, main: str, *args: str, flags: Sequence[str] = ()) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise KafkaClusterError("no 'java' on PATH: install a Java 17+ runtime")
        return [java, *flags, "-cp", f"{ensure_jars(self._jars)}/*", main, *args]

    # -- lifecycle -----------------------------------------------------
    def start(self) -> KafkaCluster:
        """Format and start the three nodes at once; wait until the cluster serves ``acks=all``."""
        t0 = time.monotonic()
        deadline = t0 + self.start_timeout
        try:
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                list(pool.map(self._format, self.nodes.values()))
            for node in self.nodes.values():
                self._launch(node)
            self._wait_ready(deadline, self.nodes.values())
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def _format(self, node: Node) -> None:
        if node.formatted:
            return
        config = self._write_config(node)
        fmt = subprocess.run(
            self._java(
                "kafka.tools.StorageTool",
                "format",
                "-t",
                self.cluster_id,
                "-c",
                str(config),
                "--ignore-formatted",
                flags=("-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=120,
        )
        if fmt.returncode != 0:
            raise KafkaClusterError(
                f"StorageTool format of node {node.node_id} failed:\n{fmt.stdout[-4000:]}"
            )
        node.formatted = True

    def _launch(self, node: Node) -> None:
        config = self._write_config(node)
        cmd = self._java(
            "kafka.Kafka",
            str(config),
            flags=(
                *self.jvm_flags,
                f"-Dlog4j2.configurationFile={node.work_dir / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={node.work_dir}",
            ),
        )
        with open(node.log_path, "ab") as log:
            log.write(f"\n=== starting {' '.join(cmd)}\n".encode())
            log.flush()
            # Spawned on the launcher thread: PR_SET_PDEATHSIG fires when the *thread* that
            # spawned the JVM exits, and restart() may be called from a short-lived worker thread
            # (asyncio.to_thread), which would take the node down with it.
            node.proc = _LAUNCHER.submit(
                subprocess.Popen,
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=node.work_dir,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            ).result()

    def _failure(self, what: str, nodes: Iterable[Node]) -> KafkaClusterError:
        logs = "\n".join(
            f"--- node {n.node_id} ({'alive' if n.alive else 'not running'}), log {n.log_path}:\n"
            f"{tail(n.log_path, 25)}"
            for n in nodes
        )
        return KafkaClusterError(f"{what}\n{logs}")

    def _wait_ready(self, deadline: float, nodes: Iterable[Node]) -> None:
        """Until every node in ``nodes`` is a live, unfenced broker and the group coordinator answers."""
        nodes = list(nodes)
        # A new client for each wait: in one run the long-lived one (used since before the kill)
        # timed out on these checks for minutes after the restarted node was back; a fresh one never did.
        admin: AdminClient | None = None
        last = "not started"
        while time.monotonic() < deadline:
            for node in nodes:
                if not node.alive:
                    assert node.proc is not None
                    raise self._failure(
                        f"Kafka node {node.node_id} exited with rc={node.proc.returncode} during start-up",
                        self.nodes.values(),
                    )
            try:
                for node in nodes:
                    socket.create_connection(("127.0.0.1", node.port), timeout=0.5).close()
                if admin is None:
                    admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
                brokers = set(admin.list_topics(timeout=2.0).brokers)  # the unfenced ones
                missing = {n.node_id for n in nodes} - brokers
                if missing:
                    raise KafkaClusterError(
                        f"nodes {sorted(missing)} not registered yet (brokers: {sorted(brokers)})"
                    )
                # Creates __consumer_offsets (three replicas) now, so the first group does not wait.
                admin.describe_consumer_groups(["_warmup"], request_timeout=5)["_warmup"].result(6)
                return
            except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
                last = str(exc)
                time.sleep(0.1)
        raise self._failure(
            f"Kafka cluster not ready within {self.start_timeout:.0f} s ({last})",
            self.nodes.values(),
        )

    def kill(self, node_id: int) -> None:
        """SIGKILL node ``node_id`` (a crash: no controlled shutdown, no leadership handed over)."""
        node = self.nodes[node_id]
        node.signal(signal.SIGKILL)
        if node.proc is not None:
            node.proc.wait(10)
        node.proc = None

    def restart(self, node_id: int, timeout: float | None = None) -> float:
        """Start node ``node_id`` again on its ports and data; returns the seconds until it served again."""
        node = self.nodes[node_id]
        if node.alive:
            return 0.0
        t0 = time.monotonic()
        self._launch(node)
        self._wait_ready(t0 + (timeout or self.start_timeout), [node])
        return time.monotonic() - t0

    def heal(self) -> None:
        """Start every node that is not running (after a test that failed between kill and restart)."""
        for node_id, node in self.nodes.items():
            if not node.alive:
                self.restart(node_id)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every node at once, SIGKILL those still running after ``timeout`` seconds."""
        running = [n for n in self.nodes.values() if n.alive]
        for node in running:
            node.signal(signal.SIGTERM)
        end = time.monotonic() + timeout
        for node in running:
            assert node.proc is not None
            try:
                node.proc.wait(max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                node.signal(signal.SIGKILL)
                node.proc.wait(10)
            node.proc = None

    def close(self, *, keep_log: bool = False) -> None:
        """Stop and delete the work dir; with ``keep_log`` only the data is deleted."""
        self.stop(timeout=5.0)  # a test cluster's data need not be flushed cleanly
        atexit.unregister(self.stop)
        self._admin = None
        if keep_log:
            for node in self.nodes.values():
                shutil.rmtree(node.work_dir / "data", ignore_errors=True)
        else:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> KafkaCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(keep_log=exc is not None)

    # -- topics and leaders -------------------------------------------
    def create_topic(
        self, name: str, partitions: int = 1, *, leader: int | None = None, timeout: float = 60.0
    ) -> str:
        """Create ``name`` with three replicas, wait until every partition has all three in sync.

        With ``leader``, that node is the first (preferred) replica, so it leads every partition.
        """
        if leader is None:
            topic = NewTopic(name, partitions, 3)
        else:
            others = [n for n in NODE_IDS if n != leader]
            topic = NewTopic(
                name, partitions, replica_assignment=[[leader, *others] for _ in range(partitions)]
            )
        self.admin().create_topics([topic])[name].result(timeout)
        self.wait_in_sync([name], timeout=timeout)
        return name

    def describe(self, topic: str) -> dict[int, tuple[int, tuple[int, ...]]]:
        """``{partition: (leader, isr)}`` as the cluster's metadata says now (leader -1: none)."""
        md = self.admin().list_topics(topic, timeout=10).topics[topic]
        if md.error is not None:
            raise KafkaClusterError(f"no metadata for {topic}: {md.error}")
        return {p: (m.leader, tuple(sorted(m.isrs))) for p, m in md.partitions.items()}

    def leader_of(self, topic: str, partition: int = 0) -> int:
        """Node id of the partition's leader now (-1: none)."""
        return self.describe(topic)[partition][0]

    def coordinator(self) -> int:
        """Node id of the group coordinator (the leader of the one ``__consumer_offsets`` partition)."""
        return self.leader_of("__consumer_offsets", 0)

    def wait_leader_moved(
        self, topic: str, partition: int, away_from: int, timeout: float = 60.0
    ) -> int:
        """Wait until the partition is led by a node other than ``away_from``; returns the new leader."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                leader = self.leader_of(topic, partition)
                if leader not in (-1, away_from):
                    return leader
            except Exception:  # noqa: BLE001 - metadata from a node that is going away
                leader = -1
            if time.monotonic() > deadline:
                raise self._failure(
                    f"{topic}[{partition}] still led by {leader} {timeout:.0f} s after "
                    f"node {away_from} died",
                    self.nodes.values(),
                )
            time.sleep(0.05)

    def elect_preferred(self, topic: str, timeout: float = 60.0) -> None:
        """Move each partition's leadership back to its first (preferred) replica, and wait for it."""
        admin = self.admin()
        md = admin.list_topics(topic, timeout=10).topics[topic]
        preferred = {p: m.replicas[0] for p, m in md.partitions.items()}
        partitions = [TopicPartition(topic, p) for p in preferred]
        results = admin.elect_leaders(ElectionType.PREFERRED, partitions).result(timeout)
        for tp, error in results.items():
            # "Election not needed": the preferred replica leads already.
            if error is not None and error.args[0].code() != KafkaError.ELECTION_NOT_NEEDED:
                raise KafkaClusterError(
                    f"preferred leader election of {tp.topic}[{tp.partition}] failed: {error}"
                )
        deadline = time.monotonic() + timeout
        while {p: leader for p, (leader, _) in self.describe(topic).items()} != preferred:
            if time.monotonic() > deadline:
                raise self._failure(
                    f"{topic}: preferred leaders {preferred} not elected within {timeout:.0f} s "
                    f"({self.describe(topic)})",
                    self.nodes.values(),
                )
            time.sleep(0.05)

    def wait_in_sync(self, topics: Iterable[str], timeout: float = 60.0) -> None:
        """Wait until every partition of ``topics`` has a leader and all three replicas in sync."""
        topics = list(topics)
        deadline = time.monotonic() + timeout
        state: object = "no metadata yet"
        while True:
            try:
                described = {t: self.describe(t) for t in topics}
                state = described
                if all(
                    leader >= 0 and len(isr) == len(NODE_IDS)
                    for parts in described.values()
                    for leader, isr in parts.values()
                ):
                    return
            except Exception as exc:  # noqa: BLE001 - a topic being created, a node starting
                state = str(exc)
            if time.monotonic() > deadline:
                raise self._failure(
                    f"replicas not in sync after {timeout:.0f} s: {state}", self.nodes.values()
                )
            time.sleep(0.1)


def main() -> None:
    """Start a cluster, print its bootstrap address, run until Ctrl-C or SIGTERM."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with KafkaCluster() as cluster:
        print(cluster.bootstrap, flush=True)
        print(
            f"[kafka] cluster started in {cluster.start_seconds:.1f}s, logs in {cluster.work_dir}; "
            "Ctrl-C stops it",
            file=sys.stderr,
            flush=True,
        )
        try:
            while all(n.alive for n in cluster.nodes.values()):
                time.sleep(0.5)
            print("[kafka] a node exited", file=sys.stderr)
        except KeyboardInterrupt:
            print("[kafka] stopping", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()


def running_cluster(session_failed: Callable[[], bool], label: str) -> Iterator[KafkaCluster]:
    """A started three-node cluster for a module fixture (`yield from` it); its logs are kept, and
    named, when the start failed or `session_failed()` says a test failed."""
    kafka = KafkaCluster()
    try:
        kafka.start()
    except Exception:
        kafka.close(keep_log=True)
        raise
    print(f"[{label}] three brokers started in {kafka.start_seconds:.1f} s")
    yield kafka
    failed = session_failed()
    kafka.close(keep_log=failed)
    if failed:
        print(f"[{label}] cluster logs kept in {kafka.work_dir}")
