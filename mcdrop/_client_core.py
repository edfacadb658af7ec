"""Transport-free parts of :mod:`mcdrop.client`: exceptions, the result type, decoding
answers and errors, and the retry policy shared by the sync and async clients (encoding
requests is :mod:`mcdrop._client_encode`). Import the public names from :mod:`mcdrop.client`.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np
from pydantic import ValidationError

from mcdrop.errors import InvalidInputError, McdropError
from mcdrop.schemas import ModelInfo, ModelList, PredictResponse

USER_AGENT = "mcdrop-client/0.1"


# --------------------------------------------------------------------------- exceptions


class ClientError(McdropError):
    """Base class of every error raised by :mod:`mcdrop.client`."""


class InputError(ClientError, InvalidInputError):
    """Arguments rejected before sending (NaN/Inf, ragged rows, non-numeric, bad seed)."""


class ConnectionFailedError(ClientError):
    """The server could not be reached (refused, unknown host, reset) after the retries."""


class RequestTimeoutError(ClientError, TimeoutError):
    """The request took longer than the client's timeout (or the server answered 504)."""


class ProtocolError(ClientError):
    """The server answered with a body that is not the JSON this client expects."""


class HTTPStatusError(ClientError):
    """The server answered with a non-2xx status.

    Attributes
    ----------
    status_code : int
        The HTTP status.
    message : str
        The server's ``{"error": ...}`` message (or the body's text when it had none).
    body : dict or None
        The decoded JSON error body, with any extra keys the server added.
    retry_after : float or None
        The ``Retry-After`` header in seconds, when the server sent one.
    """

    def __init__(
        self,
        message: str,
        status_code: int,
        body: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.message = message
        self.status_code = status_code
        self.body = body
        self.retry_after = retry_after
        super().__init__(f"HTTP {status_code}: {message}")


class BadRequestError(HTTPStatusError, ValueError):
    """The server rejected the request as invalid (400, 413, 415, 422)."""


class AuthenticationError(HTTPStatusError):
    """Missing or wrong API key (401) or a key without access (403)."""


class NotFoundError(HTTPStatusError):
    """Unknown model, or a URL that does not point at an mcdrop server (404)."""


class ServerBusyError(HTTPStatusError):
    """The server kept answering 503 (or 429) through every retry."""


class ServerError(HTTPStatusError):
    """The server failed (5xx other than 503)."""


class GatewayTimeoutError(ServerError, RequestTimeoutError):
    """The server (or a proxy in front of it) gave up waiting for the answer (504)."""


_STATUS_ERRORS: dict[int, type[HTTPStatusError]] = {
    400: BadRequestError,
    413: BadRequestError,
    415: BadRequestError,
    422: BadRequestError,
    401: AuthenticationError,
    403: AuthenticationError,
    404: NotFoundError,
    429: ServerBusyError,
    503: ServerBusyError,
    504: GatewayTimeoutError,
}
RETRY_STATUSES = frozenset({429, 503})


# --------------------------------------------------------------------------- result


@dataclass
class PredictResult:
    """The answer of one predict call, arrays as float64 numpy arrays.

    Attributes
    ----------
    model : str
        The model that answered.
    samples : int
        Monte Carlo samples drawn per row.
    seed : int
        The seed that reproduces this answer (send it back to get the same numbers).
    mean, variance, std, stderr : ndarray (B, *O)
        Predictive mean, variance, standard deviation and the Monte Carlo standard error
        of the mean. For classifiers these are over the class probabilities, (B, C).
    epistemic_variance, aleatoric_variance : ndarray (B, *O) or None
        Regression only, when the server splits the variance.
    probs : ndarray (B, C) or None
        Classification only: mean softmax probabilities.
    predictive_entropy, expected_entropy, mutual_information, variation_ratio : ndarray (B,)
        Classification only (None for regression); entropies in nats.
    draws : ndarray (S, B, *O) or None
        The raw Monte Carlo outputs, when ``return_samples=True`` was asked for and served.
    raw : dict
        The decoded JSON answer, including any field not listed here.
    """

    model: str
    samples: int
    seed: int
    mean: np.ndarray
    variance: np.ndarray
    std: np.ndarray
    stderr: np.ndarray
    epistemic_variance: np.ndarray | None = None
    aleatoric_variance: np.ndarray | None = None
    probs: np.ndarray | None = None
    predictive_entropy: np.ndarray | None = None
    expected_entropy: np.ndarray | None = None
    mutual_information: np.ndarray | None = None
    variation_ratio: np.ndarray | None = None
    draws: np.ndarray | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def task(self) -> str:
        """``"classification"`` when the answer carries class probabilities, else regression."""
        return "classification" if self.probs is not None else "regression"

    @property
    def predicted_class(self) -> np.ndarray | None:
        """Classification only: the most probable class of each row, (B,)."""
        return None if self.probs is None else np.argmax(self.probs, axis=-1)


_OPTIONAL_ARRAYS = (
    "epistemic_variance",
    "aleatoric_variance",
    "probs",
    "predictive_entropy",
    "expected_entropy",
    "mutual_information",
    "variation_ratio",
    "draws",
)


def _array(value: Any, name: str) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"field {name!r} of the answer is not a numeric array") from exc


def parse_predict(data: Any) -> PredictResult:
    """A v1 predict answer (decoded JSON) as a :class:`PredictResult`."""
    try:
        resp = PredictResponse.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(f"the predict answer does not match the v1 schema: {exc}") from exc
    optional = {k: _array(data[k], k) for k in _OPTIONAL_ARRAYS if data.get(k) is not None}
    return PredictResult(
        model=resp.model,
        samples=resp.samples,
        seed=resp.seed,
        mean=_array(resp.mean, "mean"),
        variance=_array(resp.variance, "variance"),
        std=_array(resp.std, "std"),
        stderr=_array(resp.stderr, "stderr"),
        raw=data,
        **optional,
    )


def parse_model(data: Any) -> ModelInfo:
    try:
        return ModelInfo.model_validate(data)
    except ValidationError as exc:
        raise ProtocolError(f"the model answer does not match the v1 schema: {exc}") from exc


def parse_models(data: Any) -> list[ModelInfo]:
    try:
        return ModelList.model_validate(data).models
    except ValidationError as exc:
        raise ProtocolError(f"the models answer does not match the v1 schema: {exc}") from exc


# --------------------------------------------------------------------------- paths


def model_path(name: str) -> str:
    if not isinstance(name, str) or not name:
        raise InputError(f"model name must be a non-empty string, got {name!r}")
    return "/v1/models/" + quote(name, safe="")


# --------------------------------------------------------------------------- answers


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date); None when absent/invalid."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    if math.isnan(seconds):
        return None
    return max(0.0, seconds)


def error_from_response(response: httpx.Response) -> HTTPStatusError:
    """The typed exception for a non-2xx answer, with the server's message."""
    body: dict[str, Any] | None = None
    message = ""
    try:
        decoded = response.json()
    except ValueError:
        decoded = None
    if isinstance(decoded, dict):
        body = decoded
        err = decoded.get("error", decoded.get("detail"))
        if isinstance(err, str):
            message = err
        elif err is not None:
            message = json.dumps(err)
    if not message:
        message = response.text.strip()[:200] or response.reason_phrase or "no message"
    status = response.status_code
    cls = _STATUS_ERRORS.get(status) or (ServerError if status >= 500 else HTTPStatusError)
    return cls(message, status, body, parse_retry_after(response.headers.get("Retry-After")))


def decode_json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        ctype = response.headers.get("content-type", "no content type")
        raise ProtocolError(f"expected JSON from {response.request.url}, got {ctype}") from exc


# --------------------------------------------------------------------------- policy


class ClientBase:
    """Settings, headers and the retry policy shared by ``Client`` and ``AsyncClient``."""

    def __init__(
        self,
        url: str,
        api_key: str | None,
        timeout: float | None,
        retries: int,
        backoff: float,
        max_backoff: float,
    ) -> None:
        if retries < 0:
            raise ValueError("retries must be >= 0")
        if backoff < 0 or max_backoff < 0:
            raise ValueError("backoff and max_backoff must be >= 0")
        if "://" not in url:
            url = "http://" + url
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeout = httpx.Timeout(timeout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``attempt + 1``."""
        if retry_after is not None:
            return min(retry_after, self.max_backoff)
        return min(self.backoff * (2**attempt), self.max_backoff)

    def _transport_error(self, exc: httpx.TransportError, path: str) -> ClientError:
        url = self.url + path
        if isinstance(exc, httpx.ConnectTimeout):
            return ConnectionFailedError(f"cannot connect to {url}: connection timed out")
        if isinstance(exc, httpx.TimeoutException):
            return RequestTimeoutError(f"no answer from {url} within the client timeout")
        return ConnectionFailedError(f"cannot reach {url}: {exc or type(exc).__name__}")

    @staticmethod
    def _retryable(exc: httpx.TransportError) -> bool:
        # Read/write timeouts are not retried (see mcdrop.client's docstring); a connect
        # timeout means the request never left, so it is.
        if isinstance(exc, httpx.TimeoutException):
            return isinstance(exc, httpx.ConnectTimeout)
        return isinstance(exc, (httpx.NetworkError, httpx.RemoteProtocolError))
