"""The UDP syslog listener for the gateway's outcome log, run in the app's event loop.

nginx ships one JSON line per request (`access_log syslog:server=HOST:PORT,tag=cp cp_route;`
in the rendered config); each datagram goes to GatewayOutcomes, which feeds the dispatcher's
listeners on this same loop, as the dispatch proxy does. Started by the app's lifespan when
`gateway_log_port` (CP_GATEWAY_LOG_PORT) is set; stopped by `components.closers`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from control_plane.gateway.outcomes import GatewayOutcomes

__all__ = ["SyslogProtocol", "start_gateway_log", "start_syslog_listener"]

log = logging.getLogger(__name__)

#: Receive buffer asked for (the kernel caps it at net.core.rmem_max): bursts of lines wait
#: in it while the loop serves requests, instead of being dropped.
_RECEIVE_BUFFER = 4 * 1024 * 1024


class SyslogProtocol(asyncio.DatagramProtocol):
    def __init__(self, outcomes: GatewayOutcomes) -> None:
        self.outcomes = outcomes

    def datagram_received(self, data: bytes, addr: Any) -> None:
        source = addr[0] if isinstance(addr, tuple) and addr else None
        self.outcomes.feed(data, source)

    def error_received(self, exc: Exception) -> None:
        log.debug("gateway log socket error: %s", exc)


async def start_syslog_listener(
    outcomes: GatewayOutcomes, host: str, port: int
) -> asyncio.DatagramTransport:
    """Bind host:port (UDP) and hand every datagram to `outcomes`; OSError if it cannot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(lambda: SyslogProtocol(outcomes), sock=sock)
    return transport


async def start_gateway_log(components: Any) -> Callable[[], None] | None:
    """Start the listener for an app's components; returns its closer (None: not started).

    A port that cannot be bound is logged, not fatal: routing goes on, but gateway traffic
    is not counted until it is fixed (the error says so).
    """
    settings = components.settings

    def listeners() -> list[Any]:
        dispatcher = components.dispatcher
        return dispatcher.listeners if dispatcher is not None else []

    outcomes = GatewayOutcomes(
        components.store,
        listeners,
        components.metrics.registry,
        sources=settings.gateway_log_sources,
    )
    host, port = settings.gateway_log_host, settings.gateway_log_port
    try:
        transport = await start_syslog_listener(outcomes, host, port)
    except OSError as exc:
        log.error(
            "cannot listen for gateway outcomes on udp %s:%d (%s): requests through the "
            "gateway are not counted for canaries and experiments",
            host,
            port,
            exc.strerror or exc,
        )
        return None
    log.info("listening for gateway outcome lines on udp %s:%d", host, port)
    return transport.close
