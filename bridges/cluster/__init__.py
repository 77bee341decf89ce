"""`musicgen-live cluster`: many live sessions on a Ray Serve application, surviving a lost replica.

One application, three parts:
- `Replica` (a Serve deployment, `replica.py`): each replica loads the model once and steps up to
  `sessions_per_replica` sessions in one batch (a `SessionGroup`). Each session has its own
  `WebSocketBridge`, whose one client is a pipe to the ingress: the replica speaks `serve`'s
  WebSocket protocol with the same code. It tells the router its sessions and whether it keeps up
  with real time (`record_routing_stats`).
- `Ingress` (a Serve deployment behind Serve's HTTP proxy): the browser page and the WebSocket
  protocol on one port, as `serve` has them. Each connection is one session, placed by
  `SessionRouter` (`router.py`) on a replica with a free slot that keeps up; every later request of the session
  goes to the same replica. Clients never name a session, so none can reach another's.
- `SessionStore` (a detached, named Ray actor, `store.py`): each session's state as it changes - prompts,
  controls, transport, the client's audio settings and the last `context` of codes. When a replica
  dies, the ingress opens the session on another replica from that state, as a continuation from
  its codes, and tells the client with a `warning`; its audio's sample index carries on.

The ingress's side of a connection (messages both ways, the restart elsewhere) is `relay.py`;
the Serve application that wires them (the FastAPI ingress, the deployments' settings, starting
it) is `app.py`; what every part shares (the spec, the names, Ray if installed) is `spec.py`, and
`bench.py` is `musicgen-live bench-cluster`. Ray is an optional dependency (`pip install
'musicgen-live[cluster]'`); only this package imports it.
"""
