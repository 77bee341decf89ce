"""`cluster --max-replicas`: Serve adds a replica when sessions fill the ones there are. Protects: a
session that finds no free slot waits (it is not refused, nor squeezed onto a full replica) and
plays once the new replica is up."""

from __future__ import annotations

import json
import time

import pytest

ray = pytest.importorskip("ray")
from musicgen_live.bridges.cluster.app import start_cluster  # noqa: E402
from musicgen_live.bridges.cluster.spec import NAMESPACE, ClusterSpec  # noqa: E402
from musicgen_live.bridges.config import BridgesConfig, ClusterConfig, WebSocketConfig  # noqa: E402
from musicgen_live.engine.config import SamplingConfig  # noqa: E402
from musicgen_live.streamer.config import StreamConfig  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from .test_cluster import free_port  # noqa: E402

pytestmark = pytest.mark.cluster


def test_a_full_cluster_grows_by_a_replica_for_the_next_session():
    spec = ClusterSpec(
        model="tiny",
        device="cpu",
        kernels={"exact": False, "precision": "float32", "guidance": "batched", "kv": "float32", "codec": "float32"},
        stream=StreamConfig(output="null", window_s=8, context_s=3),
        sampling=SamplingConfig(),
        websocket=WebSocketConfig(),
        bridges=BridgesConfig(),
        cluster=ClusterConfig(replicas=1, max_replicas=2, sessions_per_replica=1, port=free_port()),
    )
    ray.init(address="local", num_cpus=2, namespace=NAMESPACE, include_dashboard=False, log_to_driver=False)
    try:
        cluster = start_cluster(spec, lambda _m: None)
        try:
            url = cluster.url.replace("http", "ws")
            with connect(url, open_timeout=60) as first:
                assert json.loads(first.recv(timeout=60))["type"] == "session.created"
                assert "replicas 1 running" in cluster.status_line()
                t0 = time.monotonic()
                with connect(url, open_timeout=60) as second:
                    assert json.loads(second.recv(timeout=120))["type"] == "session.created"
                    waited = time.monotonic() - t0
                    assert "replicas 2 running" in cluster.status_line()
                    assert waited > 3.0  # it waited for the new replica (Serve's upscale delay is 5 s)
        finally:
            cluster.close()
    finally:
        from ray import serve

        serve.shutdown()
        ray.shutdown()
