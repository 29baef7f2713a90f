"""An ASGI middleware that refuses request bodies over a size limit with 413, before any
route reads them (also for chunked bodies that announce no length)."""

from __future__ import annotations

from serve.errors import PayloadTooLargeError, error_payload, error_response


class BodySizeLimit:
    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(scope, receive, send)
        seen = 0

        async def counting_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLargeError(self._message())
            return message

        return await self.app(scope, counting_receive, send)

    def _message(self) -> str:
        return f"request body over {self.max_bytes} bytes; send less (CARECYCLE_MAX_REQUEST_BYTES sets the limit)"

    async def _refuse(self, scope, receive, send):
        response = error_response(*error_payload(PayloadTooLargeError(self._message())))
        await response(scope, receive, send)
