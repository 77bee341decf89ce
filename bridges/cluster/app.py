"""The Serve application of `musicgen-live cluster` (this package holds its parts): the
ingress, the engine deployment's settings, and starting it all.

No `from __future__ import annotations` here: FastAPI reads the endpoints' annotations (Request,
WebSocket) at run time, through Serve's wrappers, which do not see this module's names.
"""

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qs

from ..ws import Gate, static_file
from .relay import Relay
from .replica import Replica
from .router import SessionRouter
from .spec import APP, NAMESPACE, STORE, ClusterSpec, require_ray
from .store import store

RESUME_TOKEN = re.compile("[0-9a-f]{32}")  # what session.created's `resume` looks like

try:
    import ray
    from fastapi import FastAPI, Request, WebSocket
    from fastapi.responses import PlainTextResponse, Response
    from ray import serve
    from ray.serve.config import RequestRouterConfig
except ImportError:  # `require_ray` says what to install
    ray = None  # type: ignore[assignment]


# -- the application ---------------------------------------------------------------------------------
if ray is not None:
    web = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=10_000)
    @serve.ingress(web)
    class Ingress:
        """The browser page and the WebSocket protocol, as `serve` has them; one session a client."""

        def __init__(self, engine: Any, spec: ClusterSpec) -> None:
            self.engine = engine
            self.spec = spec
            self.gate = Gate(replace(spec.websocket, host=spec.cluster.host, port=spec.cluster.port))
            self.store = store(spec.cluster.resume_s)
            self.relays: set[Relay] = set()

        @web.get("/")
        @web.get("/client.js")
        @web.get("/worklet.js")
        async def page(self, request: Request) -> Response:
            found = static_file(request.url.path)
            if found is None:
                return PlainTextResponse("not found\n", status_code=404)
            return Response(found[0], media_type=found[1], headers={"Cache-Control": "no-store"})

        @web.websocket("/")
        async def connect(self, websocket: WebSocket) -> None:
            refused = self.gate.refusal(websocket.headers.get("origin"), websocket.url.query, len(self.relays))
            if refused is not None:
                try:
                    await websocket.send_denial_response(
                        PlainTextResponse(f"{refused[1]}\n", status_code=refused[0].value)
                    )
                except RuntimeError:  # the server cannot send a denial: a plain close (HTTP 403)
                    await websocket.close(code=1008, reason=refused[1])
                return
            resume = parse_qs(websocket.url.query).get("resume", [""])[0]
            if resume and not RESUME_TOKEN.fullmatch(resume):
                resume = ""  # not a token we gave: a new session (the relay says so)
            await websocket.accept()
            for old in [r for r in self.relays if resume and r.sid == resume]:
                await old.stop()  # the same client again (its old connection not yet seen closed)
            relay = Relay(websocket, self.engine, self.store, self.spec, resume)
            self.relays.add(relay)
            try:
                await relay.run()
            finally:
                self.relays.discard(relay)

        def clients(self) -> dict[str, int]:
            """Clients connected through this ingress, and how often their sessions were restarted."""
            return {"clients": len(self.relays), "restarts": sum(r.restarts for r in self.relays)}


def build_app(spec: ClusterSpec) -> Any:
    """The Serve application: ingress + replicas (the store is made on first use)."""
    require_ray()
    cl = spec.cluster
    autoscaling = (
        {
            "min_replicas": cl.replicas,
            "max_replicas": cl.max_replicas,
            "target_ongoing_requests": cl.sessions_per_replica,  # each session holds one streaming request
            "upscale_delay_s": 5.0,
            "downscale_delay_s": 120.0,
        }
        if cl.max_replicas > cl.replicas
        else None
    )
    actor: dict[str, Any] = {
        "num_cpus": cl.cpus_per_replica,
        "runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(max(1, int(cl.cpus_per_replica)))}},
    }
    if cl.gpus_per_replica:
        actor["num_gpus"] = cl.gpus_per_replica
    router: dict[str, Any] = {  # the router's settings (a dict: Ray's pydantic types confuse mypy)
        "request_router_class": SessionRouter,
        "request_router_kwargs": {"capacity": cl.sessions_per_replica},
        "request_routing_stats_period_s": 1.0,
        "request_routing_stats_timeout_s": 2.0,
    }
    engine: Any = serve.deployment(
        Replica,
        name="Replica",
        num_replicas=None if autoscaling else cl.replicas,
        autoscaling_config=autoscaling,
        ray_actor_options=actor,
        max_ongoing_requests=cl.sessions_per_replica + 64,  # its sessions' streams and their commands
        graceful_shutdown_timeout_s=2.0,  # a replica scaled down hands its sessions over as a lost one does
        health_check_period_s=2.0,
        health_check_timeout_s=10.0,
        request_router_config=RequestRouterConfig(**router),
    )
    ingress: Any = Ingress
    return ingress.bind(engine.bind(spec), spec)


@dataclass
class Cluster:
    """A running application on this process's Ray connection; `close()` takes it down."""

    url: str
    started_ray: bool

    def sessions(self) -> int:
        """Sessions the store holds (one a connected client)."""
        return int(ray.get(store().count.remote()))

    def status_line(self) -> str:
        app = serve.status().applications.get(APP)
        if app is None:
            return "cluster: the application is gone"
        engine = app.deployments.get("Replica")
        states = ", ".join(f"{n} {s.lower()}" for s, n in (engine.replica_states if engine else {}).items())
        return f"cluster {app.status.lower()}: replicas {states or 'none'}; {self.sessions()} session(s)"

    def close(self) -> None:
        serve.delete(APP)
        try:
            ray.kill(ray.get_actor(STORE, namespace=NAMESPACE))
        except ValueError:
            pass
        if self.started_ray:
            serve.shutdown()
            ray.shutdown()


def start_cluster(spec: ClusterSpec, say: Callable[[str], None]) -> Cluster:
    """Connect to (or start) Ray, start Serve's proxy on [cluster] host:port and deploy the app;
    returns once every replica is up."""
    require_ray()
    cl = spec.cluster
    started = not ray.is_initialized()
    if started:
        say(f"starting Ray{' on this machine' if not cl.address else ' at ' + cl.address} ...")
        ray.init(  # "local": a Ray of our own, never one another program left running here
            address=cl.address or "local", namespace=NAMESPACE, log_to_driver=bool(os.environ.get("RAY_LOG"))
        )
    serve.start(http_options={"host": cl.host, "port": cl.port})
    t0 = time.monotonic()
    serve.run(build_app(spec), name=APP, route_prefix="/")
    url = f"http://{cl.host}:{cl.port}/"
    say(
        f"cluster up in {time.monotonic() - t0:.1f} s: {cl.replicas} replica(s) of {spec.model}, "
        f"{cl.sessions_per_replica} session(s) each; WebSocket on ws://{cl.host}:{cl.port}/ ; browser client at {url}"
    )
    return Cluster(url, started)
