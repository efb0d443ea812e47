"""The HTTP client of shadow copies: one pooled httpx client, apart from the dispatch proxy's.

A separate pool, so copies never take a connection the primary traffic needs. The answer is
read up to `max_body` bytes (more is marked truncated and not compared); content encodings
the stdlib can undo (gzip, deflate) are undone before comparison, for both sides alike.
"""

from __future__ import annotations

import time
import zlib

import httpx

from control_plane.shadow.diff import Answer

__all__ = ["ShadowSender", "decoded"]


class ShadowSender:
    def __init__(
        self,
        *,
        timeout: float,
        max_connections: int,
        max_body: int,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.max_body = max_body
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            follow_redirects=False,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(
        self, method: str, url: str, headers: list[tuple[str, str]], body: bytes
    ) -> Answer:
        """The backend's answer; no answer (refused, timed out) is status None with why."""
        started = time.perf_counter()
        request = self._client.build_request(method, url, headers=headers, content=body)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException:
            return Answer(None, time.perf_counter() - started, error="timeout")
        except httpx.HTTPError as exc:
            return Answer(
                None, time.perf_counter() - started, error=f"refused: {type(exc).__name__}"
            )
        seconds = time.perf_counter() - started
        chunks: list[bytes] = []
        size = 0
        truncated = False
        try:
            async for chunk in response.aiter_raw():
                size += len(chunk)
                if size > self.max_body:
                    truncated = True
                    break
                chunks.append(chunk)
        except httpx.HTTPError as exc:
            return Answer(
                response.status_code, seconds, error=f"body: {type(exc).__name__}", truncated=True
            )
        finally:
            await response.aclose()
        raw = b"".join(chunks)
        body_bytes, ok = decoded(raw, response.headers.get("content-encoding"), self.max_body)
        return Answer(response.status_code, seconds, body_bytes, truncated=truncated or not ok)


def decoded(body: bytes, encoding: str | None, limit: int) -> tuple[bytes, bool]:
    """(`body` with its content encoding undone, True), or (b"", False) when that fails or
    would exceed `limit` bytes (a compressed body may expand a thousandfold)."""
    name = (encoding or "").strip().lower()
    if name in ("", "identity"):
        return body, True
    wbits = {
        "gzip": 16 + zlib.MAX_WBITS,
        "x-gzip": 16 + zlib.MAX_WBITS,
        "deflate": zlib.MAX_WBITS,
    }.get(name)
    if wbits is None:
        return b"", False
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        return b"", False
    if len(out) > limit or inflater.unconsumed_tail:
        return b"", False
    return out, True
