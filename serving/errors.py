"""The one exception type request handling raises: a gRPC status and a message."""
from __future__ import annotations

import grpc


class RequestError(Exception):
    """A request the server refuses; becomes the gRPC status `code` with `message`."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.NOT_FOUND, message)
