"""`control-plane serve --workers N`: one primary and N-1 decide workers on one port.

    primary (pid P)                              worker i (pid W_i), i = 1..N-1
      public host:port   SO_REUSEPORT   <---->     public host:port   SO_REUSEPORT
      internal 127.0.0.1:<http>  <-- forwarded --  every path but the routing API
      internal 127.0.0.1:<sync>  -- flagd.sync.v1 -> its flag set (the primary's versions)
      /metrics, /v1/traffic  <-- scraped --------  internal 127.0.0.1:<fd> (token)

The primary is the whole control plane (flag store, versions, admin API, canary controller,
sync server, experiments, console). Each worker is a routing replica of it (decide, route,
dispatch, OFREP, health) that records its own exposures (own journal under the spill
directory, same database) and forwards every other request to the primary. The kernel spreads
connections over the sockets of the port, so any process may get any request.

- `supervisor`: starts, restarts and stops the workers (WorkerPool)
- `worker`: the worker process (`serve --worker-of`, hidden)
- `front`: the worker's ASGI front: local routing API, forwarding, internal endpoints
- `forwarding`: the forwarding proxy to the primary
- `exposures`: a worker's experiment recorder and writer
- `peers`: the primary's side of the internal endpoints (scrapes, traffic windows)
- `metrics_merge`, `traffic_merge`: one exposition and one traffic view for all processes
- `lifespan`: run start/stop hooks around an ASGI app's lifespan
"""
