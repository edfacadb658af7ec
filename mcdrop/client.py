"""Python client for the mcdrop HTTP service (v1 JSON API), sync and async, on httpx.

::

    from mcdrop.client import Client

    with Client("http://127.0.0.1:8000", api_key=None) as client:
        res = client.predict("digits", x, samples=100, seed=7)   # x: list, ndarray or tensor
        res.mean, res.std, res.probs, res.mutual_information      # numpy arrays

``AsyncClient`` has the same methods as coroutines (``async with AsyncClient(url) as c``).

Exceptions raised by the client::

    McdropError                          (mcdrop.errors)
    └── ClientError
        ├── InputError (InvalidInputError, ValueError)   rejected locally, nothing was sent
        ├── ConnectionFailedError        no connection (refused, DNS, reset) after retries
        ├── RequestTimeoutError (TimeoutError)   the client's read/write timeout
        ├── ProtocolError                the server's answer is not the expected JSON
        └── HTTPStatusError              any non-2xx answer: .status_code, .message, .body
            ├── BadRequestError (ValueError)     400, 413, 415, 422
            ├── AuthenticationError              401, 403
            ├── NotFoundError                    404 (unknown model or wrong URL)
            ├── ServerBusyError                  503 or 429 still answered after the retries
            └── ServerError                      other 5xx
                └── GatewayTimeoutError (also RequestTimeoutError)   504

Retries (``retries`` extra attempts, exponential backoff ``backoff * 2**n`` capped at
``max_backoff`` seconds):

- 503 / 429 are retried for every call; a ``Retry-After`` header (seconds or HTTP date)
  replaces the computed delay, capped at ``max_backoff`` as well.
- Connection failures are retried for every call, ``predict`` included. A predict has no
  side effect on the server: with a seed it is a pure function of (model, inputs, samples,
  seed), and without one the lost answer was never seen, so a fresh draw is just as valid.
  The only cost is the server computing the lost answer twice.
- Read/write timeouts are *not* retried: the server is probably busy computing, and sending
  the same heavy request again would only add load. They raise ``RequestTimeoutError``.

``ready()`` and ``live()`` are probes: they answer ``False`` when the server cannot be
reached, times out or answers 503, and never retry. They still raise for answers that mean
a wrong configuration (401/403, 404), so a typo in the URL does not look like "not ready".

Besides httpx and numpy this module imports only :mod:`mcdrop.schemas` (the wire types it
shares with the service), :mod:`mcdrop.errors` and :mod:`mcdrop.fields`; torch tensors are
accepted by duck typing (``.detach().cpu().numpy()``), torch is never imported here.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Any

import httpx

from mcdrop._client_core import (
    RETRY_STATUSES,
    AuthenticationError,
    BadRequestError,
    ClientBase,
    ClientError,
    ConnectionFailedError,
    GatewayTimeoutError,
    HTTPStatusError,
    InputError,
    NotFoundError,
    PredictResult,
    ProtocolError,
    RequestTimeoutError,
    ServerBusyError,
    ServerError,
    decode_json,
    error_from_response,
    model_path,
    parse_model,
    parse_models,
    parse_predict,
    parse_retry_after,
)
from mcdrop._client_encode import predict_body
from mcdrop.schemas import ModelInfo

__all__ = [
    "Client",
    "AsyncClient",
    "PredictResult",
    "ModelInfo",
    "ClientError",
    "InputError",
    "ConnectionFailedError",
    "RequestTimeoutError",
    "ProtocolError",
    "HTTPStatusError",
    "BadRequestError",
    "AuthenticationError",
    "NotFoundError",
    "ServerBusyError",
    "ServerError",
    "GatewayTimeoutError",
]


# --------------------------------------------------------------------------- sync client


class Client(ClientBase):
    """Blocking client of an mcdrop server.

    Parameters
    ----------
    url : str
        Base URL of the server, e.g. ``"http://127.0.0.1:8000"``.
    api_key : str, optional
        Sent as ``Authorization: Bearer KEY``.
    timeout : float or None
        Seconds to wait for connecting, sending and each read (None: no limit).
    retries : int
        Extra attempts after a 503/429 or a connection failure (see module docstring).
    backoff, max_backoff : float
        First retry delay in seconds (doubling each time) and the cap on any delay,
        ``Retry-After`` included.
    transport : httpx.BaseTransport, optional
        A custom transport (``httpx.MockTransport`` in tests).
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float | None = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        transport: httpx.BaseTransport | None = None,
        *,
        max_backoff: float = 30.0,
    ) -> None:
        super().__init__(url, api_key, timeout, retries, backoff, max_backoff)
        self._http = httpx.Client(
            base_url=self.url, headers=self._headers, timeout=self._timeout, transport=transport
        )

    # -- plumbing

    def _send(
        self, method: str, path: str, content: bytes | None = None, retry: bool = True
    ) -> httpx.Response:
        headers = {"Content-Type": "application/json"} if content is not None else None
        attempts = 1 + (self.retries if retry else 0)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self._http.request(method, path, content=content, headers=headers)
            except httpx.TransportError as exc:
                if last or not self._retryable(exc):
                    raise self._transport_error(exc, path) from exc
                time.sleep(self._delay(attempt, None))
                continue
            if response.status_code in RETRY_STATUSES and not last:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                response.close()
                time.sleep(self._delay(attempt, retry_after))
                continue
            if response.is_success:
                return response
            raise error_from_response(response)
        raise AssertionError("unreachable")  # pragma: no cover

    def _probe(self, path: str) -> bool:
        try:
            self._send("GET", path, retry=False)
        except (ConnectionFailedError, RequestTimeoutError, ServerBusyError):
            return False
        return True

    # -- API

    def live(self) -> bool:
        """Whether the server process answers (``GET /health/live``); False when unreachable."""
        return self._probe("/health/live")

    def ready(self) -> bool:
        """Whether the server can serve predictions now (``GET /health/ready``).

        False when the server is unreachable, times out or answers 503; raises
        :class:`HTTPStatusError` for answers that point at a misconfiguration (404, 401).
        """
        return self._probe("/health/ready")

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.25) -> None:
        """Poll :meth:`ready` until it is True; raise RequestTimeoutError after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() >= deadline:
                raise RequestTimeoutError(f"{self.url} was not ready within {timeout:g} s")
            time.sleep(interval)

    def models(self) -> list[ModelInfo]:
        """The served models (``GET /v1/models``) as :class:`mcdrop.schemas.ModelInfo`."""
        return parse_models(decode_json(self._send("GET", "/v1/models")))

    def model(self, name: str) -> ModelInfo:
        """Description of one model (``GET /v1/models/{name}``); NotFoundError if unknown."""
        return parse_model(decode_json(self._send("GET", model_path(name))))

    def predict(
        self,
        model: str,
        inputs: Any,
        samples: int | None = None,
        seed: int | None = None,
        return_samples: bool = False,
        bitwise: bool = False,
    ) -> PredictResult:
        """Monte Carlo dropout prediction of ``model`` on a batch of rows.

        Parameters
        ----------
        model : str
            Name of a served model.
        inputs : array-like (B, *F), or list of str (B,)
            Nested lists, a numpy array of any int/float dtype or a torch tensor. Integers
            (Python ints, integer dtypes) are sent as JSON integers, so int64 (token id)
            models can be queried; floats as floats. Rows with NaN or infinite values,
            booleans and integers outside int64 are rejected here, before anything is
            sent. A list of strings is sent as raw texts, for a model that tokenizes.
        samples : int, optional
            Monte Carlo samples per row (server default when omitted).
        seed : int, optional
            Makes the answer reproducible; the answer's ``seed`` can be sent back.
        return_samples : bool
            Also return the raw draws as ``PredictResult.draws`` (S, B, *O); logits for
            classifiers. The server caps an answer at 1,000,000 such numbers.
        bitwise : bool
            With a seed: the answer is byte-identical to the same request sent alone (the
            server runs it in a batch of its own). Without, it agrees to float32 rounding.

        Returns
        -------
        PredictResult
        """
        body = predict_body(inputs, samples, seed, return_samples, bitwise)
        response = self._send("POST", model_path(model) + "/predict", content=body)
        return parse_predict(decode_json(response))

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------- async client


class AsyncClient(ClientBase):
    """Asynchronous twin of :class:`Client`: the same parameters and methods, awaited."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float | None = 30.0,
        retries: int = 3,
        backoff: float = 0.5,
        transport: httpx.AsyncBaseTransport | None = None,
        *,
        max_backoff: float = 30.0,
    ) -> None:
        super().__init__(url, api_key, timeout, retries, backoff, max_backoff)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=self._headers, timeout=self._timeout, transport=transport
        )

    async def _send(
        self, method: str, path: str, content: bytes | None = None, retry: bool = True
    ) -> httpx.Response:
        headers = {"Content-Type": "application/json"} if content is not None else None
        attempts = 1 + (self.retries if retry else 0)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await self._http.request(method, path, content=content, headers=headers)
            except httpx.TransportError as exc:
                if last or not self._retryable(exc):
                    raise self._transport_error(exc, path) from exc
                await asyncio.sleep(self._delay(attempt, None))
                continue
            if response.status_code in RETRY_STATUSES and not last:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                await response.aclose()
                await asyncio.sleep(self._delay(attempt, retry_after))
                continue
            if response.is_success:
                return response
            raise error_from_response(response)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _probe(self, path: str) -> bool:
        try:
            await self._send("GET", path, retry=False)
        except (ConnectionFailedError, RequestTimeoutError, ServerBusyError):
            return False
        return True

    async def live(self) -> bool:
        """See :meth:`Client.live`."""
        return await self._probe("/health/live")

    async def ready(self) -> bool:
        """See :meth:`Client.ready`."""
        return await self._probe("/health/ready")

    async def wait_ready(self, timeout: float = 60.0, interval: float = 0.25) -> None:
        """See :meth:`Client.wait_ready`."""
        deadline = time.monotonic() + timeout
        while not await self.ready():
            if time.monotonic() >= deadline:
                raise RequestTimeoutError(f"{self.url} was not ready within {timeout:g} s")
            await asyncio.sleep(interval)

    async def models(self) -> list[ModelInfo]:
        """See :meth:`Client.models`."""
        return parse_models(decode_json(await self._send("GET", "/v1/models")))

    async def model(self, name: str) -> ModelInfo:
        """See :meth:`Client.model`."""
        return parse_model(decode_json(await self._send("GET", model_path(name))))

    async def predict(
        self,
        model: str,
        inputs: Any,
        samples: int | None = None,
        seed: int | None = None,
        return_samples: bool = False,
        bitwise: bool = False,
    ) -> PredictResult:
        """See :meth:`Client.predict`."""
        body = predict_body(inputs, samples, seed, return_samples, bitwise)
        response = await self._send("POST", model_path(model) + "/predict", content=body)
        return parse_predict(decode_json(response))

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    close = aclose

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
