"""One exception hierarchy for everything the reconciler raises, and one classifier.

``ReconcilerError`` is the root. API failures are classified once, at the client, by the
rules of :func:`classify_status` and :func:`classify_transport`, into the exception
classes that decide what the engine does next (DESIGN section 1):

- ``PermanentError`` (terminal): a 4xx other than 408/409/429. Retrying the same request
  cannot help: the manifest is wrong, the service or command is missing.
- ``CredentialsError`` (a ``PermanentError``): 401/403. The token or the organisation's
  entitlement is wrong; not any one intent's fault, and fixed without touching manifests.
- ``TemporaryError`` (transient): 429; on a GET also 408, 409, 5xx, timeouts and dropped
  connections; a connection refused before anything was sent. Retried with backoff;
  ``delay`` carries the server's ``Retry-After`` when it gave one.
- ``OutcomeUnknownError``: a run POST whose answer never arrived (or was a 408, 409 or
  5xx). The command may or may not have started; the engine resolves it with
  ``GET /operations/{id}``, never a blind re-POST.

:func:`classify` reads any exception back as an :class:`Outcome` (kind, delay, unsent), so
callers branch on one value instead of on classes, statuses and ``getattr``.

Messages never contain the API token or the webhook secret.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = [
    "IDEMPOTENT_METHODS",
    "ApiError",
    "ConfigError",
    "CredentialsError",
    "Outcome",
    "OutcomeKind",
    "OutcomeUnknownError",
    "PermanentError",
    "Problem",
    "ReconcilerError",
    "SourceError",
    "StoreError",
    "TemporaryError",
    "TransportFailure",
    "classify",
    "classify_status",
    "classify_transport",
]


class ReconcilerError(Exception):
    """Base class of every error raised by this package."""


class ConfigError(ReconcilerError):
    """A flag, environment variable or configuration file is invalid."""


@dataclass(frozen=True, order=True)
class Problem:
    """One problem found in a manifest source, located by file and line (1-based)."""

    file: str
    line: int
    name: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.name}: {self.message}"


class StoreError(ReconcilerError):
    """The state store cannot be opened, migrated or written."""


class OutcomeKind(StrEnum):
    """What a failed API call means for the caller."""

    #: retrying the same request cannot succeed
    TERMINAL = "terminal"
    #: try again later (after ``Outcome.delay`` if the server gave one)
    TRANSIENT = "transient"
    #: the request may have been executed: look it up before sending it again
    UNKNOWN = "unknown"
    #: refused for the token or the organisation's entitlement (401/403)
    CREDENTIALS = "credentials"


class TransportFailure(StrEnum):
    """Why no HTTP answer came (``ApiError.status`` is then None)."""

    #: no connection could be made, or none was free in the pool: the request never left
    NOT_SENT = "not-sent"
    #: a timeout, a dropped connection or an undecodable answer after the request (or a
    #: part of it) went out
    NO_ANSWER = "no-answer"
    #: the request could not be built or sent as built (unsupported URL scheme, a local
    #: protocol violation)
    INVALID_REQUEST = "invalid-request"
    #: a transport failure of no known kind
    UNRECOGNISED = "unrecognised"


class ApiError(ReconcilerError):
    """An AI Lake (or Kubernetes) API call failed; carries what the server said.

    ``delay`` is the wait the server asked for (``Retry-After``), in seconds; the client
    sets it on transient errors only (the only ones retried), and it is None when the
    server gave none. ``transport`` says why no answer came when ``status`` is None.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str = "",
        endpoint: str = "",
        status: int | None = None,
        title: str | None = None,
        detail: str | None = None,
        trace_id: str | None = None,
        body: str | None = None,
        delay: float | None = None,
        transport: TransportFailure | None = None,
    ) -> None:
        super().__init__(message)
        self.method = method
        self.endpoint = endpoint
        self.status = status
        self.title = title
        self.detail = detail
        self.trace_id = trace_id
        self.body = body
        self.delay: float | None = delay
        self.transport: TransportFailure | None = transport


class PermanentError(ApiError):
    """Terminal: retrying the same request cannot succeed (4xx except 408/409/429)."""


class CredentialsError(PermanentError):
    """401/403: the token is missing or wrong, or the organisation lacks the entitlement.

    Terminal for the request, but not the fault of the intent that made it: the same
    request succeeds once the credentials are fixed.
    """


class TemporaryError(ApiError):
    """Transient: retry later; ``delay`` is the server's Retry-After in seconds, if any."""


class OutcomeUnknownError(ApiError):
    """A run POST got no answer: the operation may exist; look it up before re-POSTing."""

    def __init__(self, message: str, *, operation_id: str, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.operation_id = operation_id


# --------------------------------------------------------------------------- classifier

#: Methods whose repetition cannot do more than a single request (RFC 9110 9.2.2): a lost
#: answer to one of these is worth a retry; a lost answer to any other (POST) is unknown.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


@dataclass(frozen=True)
class Outcome:
    """What one failure means: its kind, the server's requested wait, and ``unsent``.

    ``unsent`` is True when the request certainly was not executed, so sending it again
    cannot run anything twice.
    """

    kind: OutcomeKind
    delay: float | None = None
    unsent: bool = False


def classify_status(status: int, *, method: str) -> OutcomeKind:
    """The kind of a non-success HTTP answer ``status`` to a ``method`` request.

    ========================  ================  ==========================================
    status                    kind              why
    ========================  ================  ==========================================
    401, 403                  credentials       the token or the entitlement, not the
                                                request; fixed outside the manifests
    429                       transient         throttled: refused before processing
    408, 409, 5xx (GET, PUT   transient         nothing to lose by asking again
    and other idempotent)
    408, 409, 5xx (POST)      unknown           the server may have started the command
                                                (a 409: an operation with this id exists)
    any other (400, 404, ..,  terminal          the same request is refused again
    3xx, an unexpected 2xx)
    ========================  ================  ==========================================

    Callers handle their own successes (and expected answers such as a lookup's 404)
    before asking.
    """
    if status in (401, 403):
        return OutcomeKind.CREDENTIALS
    if status == 429:
        return OutcomeKind.TRANSIENT
    if status in (408, 409) or status >= 500:
        if method.upper() in IDEMPOTENT_METHODS:
            return OutcomeKind.TRANSIENT
        return OutcomeKind.UNKNOWN
    return OutcomeKind.TERMINAL


def classify_transport(failure: TransportFailure, *, method: str) -> OutcomeKind:
    """The kind of a request that got no HTTP answer.

    ================  ======================  ==============================================
    failure           kind                    why
    ================  ======================  ==============================================
    not-sent          transient               the request never left (connection refused
                                              or timed out, no pooled connection free)
    no-answer         transient (idempotent)  read/write timeout, dropped connection,
                      unknown (POST)          undecodable answer: it may have run
    invalid-request   terminal                it cannot be sent as built
    unrecognised      terminal (idempotent)   not retried blindly
                      unknown (POST)          it may have gone out
    ================  ======================  ==============================================
    """
    if failure is TransportFailure.NOT_SENT:
        return OutcomeKind.TRANSIENT
    if failure is TransportFailure.INVALID_REQUEST:
        return OutcomeKind.TERMINAL
    if method.upper() not in IDEMPOTENT_METHODS:
        return OutcomeKind.UNKNOWN
    if failure is TransportFailure.NO_ANSWER:
        return OutcomeKind.TRANSIENT
    return OutcomeKind.TERMINAL


def classify(exc: BaseException) -> Outcome:
    """Read an exception back as an :class:`Outcome`; its class decides the kind.

    ====================================  ===========  ======  ===========================
    exception                             kind         unsent  raised for
    ====================================  ===========  ======  ===========================
    CredentialsError                      credentials  yes     401, 403
    PermanentError with a status          terminal     yes     400, 404, other 4xx, 3xx
    PermanentError, ``invalid-request``   terminal     yes     bad URL scheme, local
                                                               protocol error
    PermanentError, ``unrecognised``      terminal     no      an unknown transport
                                                               failure on a GET
    OutcomeUnknownError                   unknown      no      a run POST's 408, 409, 5xx,
                                                               timeout, dropped connection
    TemporaryError with status 429        transient    yes     throttled
    TemporaryError, ``not-sent``          transient    yes     connection refused, connect
                                                               or pool timeout
    TemporaryError, any other             transient    no      a GET's 408/409/5xx, timeout
                                                               or dropped connection; a
                                                               2xx that is not our JSON
    ApiError (not a subclass)             kind by :func:`classify_status` (with a status)
                                          or :func:`classify_transport`; else terminal
    anything else                         terminal     no      a bug: retrying the same
                                                               code cannot help
    ====================================  ===========  ======  ===========================

    ``unsent``: the request certainly was not executed. A refusal with a status (terminal,
    credentials, 429) was answered without executing; ``not-sent`` never left; an
    ``invalid-request`` was never built. ``delay`` is ``ApiError.delay`` (the server's
    ``Retry-After``), None when it gave none.
    """
    if not isinstance(exc, ApiError):
        return Outcome(OutcomeKind.TERMINAL)
    if isinstance(exc, CredentialsError):
        kind = OutcomeKind.CREDENTIALS
    elif isinstance(exc, PermanentError):
        kind = OutcomeKind.TERMINAL
    elif isinstance(exc, OutcomeUnknownError):
        kind = OutcomeKind.UNKNOWN
    elif isinstance(exc, TemporaryError):
        kind = OutcomeKind.TRANSIENT
    elif exc.status is not None:
        kind = classify_status(exc.status, method=exc.method)
    elif exc.transport is not None:
        kind = classify_transport(exc.transport, method=exc.method)
    else:
        kind = OutcomeKind.TERMINAL
    return Outcome(kind, exc.delay, _unsent(kind, exc))


def _unsent(kind: OutcomeKind, exc: ApiError) -> bool:
    if kind is OutcomeKind.UNKNOWN:
        return False
    if exc.status is not None:
        return kind is not OutcomeKind.TRANSIENT or exc.status == 429
    return exc.transport in (TransportFailure.NOT_SENT, TransportFailure.INVALID_REQUEST)


class SourceError(ReconcilerError):
    """The manifest source cannot be read or followed (a git fetch failed, no tree yet).

    Its message never holds a credential: URLs are shown without user info, and git's own
    output is scrubbed of the token before it is put in a message."""
