"""Read-only views of a connection's scope: URL, headers, query parameters, state."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from http import cookies as http_cookies
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import SplitResult, parse_qsl, urlsplit

if TYPE_CHECKING:
    from service.types import Scope

__all__ = (
    "Address",
    "Headers",
    "QueryParams",
    "State",
    "URL",
    "URLPath",
    "parse_cookies",
    "route_path",
)

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class Address(NamedTuple):
    """A peer's host and port."""

    host: str
    port: int


class URL:
    """A URL, built from a string or from an ASGI scope as Starlette does."""

    def __init__(self, url: str = "", scope: Scope | None = None) -> None:
        if scope is not None:
            if url:
                raise ValueError('Cannot set both "url" and "scope".')
            url = _url_from_scope(scope)
        self._url = url
        self._components: SplitResult | None = None

    @property
    def components(self) -> SplitResult:
        if self._components is None:
            self._components = urlsplit(self._url)
        return self._components

    @property
    def scheme(self) -> str:
        return self.components.scheme

    @property
    def netloc(self) -> str:
        return self.components.netloc

    @property
    def path(self) -> str:
        return self.components.path

    @property
    def query(self) -> str:
        return self.components.query

    @property
    def fragment(self) -> str:
        return self.components.fragment

    @property
    def hostname(self) -> str | None:
        return self.components.hostname

    @property
    def port(self) -> int | None:
        return self.components.port

    @property
    def is_secure(self) -> bool:
        return self.scheme in {"https", "wss"}

    def replace(self, **kwargs: Any) -> URL:
        """Return a copy with the given components (``scheme``, ``path``, ...) replaced."""
        return URL(self.components._replace(**kwargs).geturl())

    def __eq__(self, other: object) -> bool:
        return str(self) == str(other)

    def __hash__(self) -> int:
        return hash(self._url)

    def __str__(self) -> str:
        return self._url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._url!r})"


def route_path(scope: Scope) -> str:
    """The path a request asks of this app: its ``path`` without the ``root_path`` it
    is mounted at (a Starlette or FastAPI ``Mount`` keeps the whole path in ``path``)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :] or "/"
    return path


def _url_from_scope(scope: Scope) -> str:
    scheme = scope.get("scheme", "http")
    server = scope.get("server")
    path = scope["path"]
    query_string = scope.get("query_string", b"")
    host = next(
        (value.decode("latin-1") for key, value in scope["headers"] if key == b"host"), None
    )
    if host is not None:
        url = f"{scheme}://{host}{path}"
    elif server is None:
        url = path
    else:
        name, port = server
        default = _DEFAULT_PORTS.get(scheme)
        url = f"{scheme}://{name}{path}" if port == default else f"{scheme}://{name}:{port}{path}"
    if query_string:
        url += "?" + query_string.decode()
    return url


class URLPath(str):
    """A path from ``url_path_for``, which ``make_absolute_url`` turns into a full URL."""

    __slots__ = ("protocol",)

    def __new__(cls, path: str, protocol: str = "") -> URLPath:
        return str.__new__(cls, path)

    def __init__(self, path: str, protocol: str = "") -> None:
        self.protocol = protocol

    def make_absolute_url(self, base_url: str | URL) -> URL:
        """Join this path to *base_url*, switching to ws/wss for a WebSocket route."""
        base = base_url if isinstance(base_url, URL) else URL(base_url)
        if self.protocol == "websocket":
            scheme = "wss" if base.is_secure else "ws"
        else:
            scheme = "https" if base.is_secure else "http"
        return URL(f"{scheme}://{base.netloc}{base.path.rstrip('/')}{self}")


class Headers(Mapping[str, str]):
    """Request headers: case-insensitive, read-only; repeated names keep every value."""

    def __init__(self, raw: list[tuple[bytes, bytes]] | None = None) -> None:
        self._list = list(raw or [])

    @property
    def raw(self) -> list[tuple[bytes, bytes]]:
        return self._list

    def getlist(self, key: str) -> list[str]:
        """Return every value of header *key*, in order."""
        name = key.lower().encode("latin-1")
        return [value.decode("latin-1") for key_, value in self._list if key_.lower() == name]

    def __getitem__(self, key: str) -> str:
        name = key.lower().encode("latin-1")
        for key_, value in self._list:
            if key_.lower() == name:
                return value.decode("latin-1")
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        name = key.lower().encode("latin-1")
        return any(key_.lower() == name for key_, _ in self._list)

    def __iter__(self) -> Iterator[str]:
        return (key.decode("latin-1") for key, _ in self._list)

    def __len__(self) -> int:
        return len(self._list)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return False
        return sorted(self._list) == sorted(other._list)

    __hash__ = None  # type: ignore[assignment]  # mutable-looking mapping, as Starlette's

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self.items())!r})"


class QueryParams(Mapping[str, str]):
    """Query-string parameters: read-only; the last value wins, ``getlist`` gives all."""

    def __init__(self, query_string: str | bytes = "") -> None:
        text = query_string.decode("latin-1") if isinstance(query_string, bytes) else query_string
        self._list = parse_qsl(text, keep_blank_values=True)
        self._dict = dict(self._list)

    def getlist(self, key: str) -> list[str]:
        """Return every value given for *key*, in order."""
        return [value for key_, value in self._list if key_ == key]

    def multi_items(self) -> list[tuple[str, str]]:
        return list(self._list)

    def __getitem__(self, key: str) -> str:
        return self._dict[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict)

    def __len__(self) -> int:
        return len(self._dict)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._list!r})"


class State:
    """An object whose attributes (and items) are the keys of a scope's ``state`` dict."""

    _state: dict[str, Any]

    def __init__(self, state: dict[str, Any] | None = None) -> None:
        super().__setattr__("_state", {} if state is None else state)

    def __setattr__(self, key: str, value: Any) -> None:
        self._state[key] = value

    def __getattr__(self, key: str) -> Any:
        try:
            return self._state[key]
        except KeyError:
            message = "'{}' object has no attribute '{}'"
            raise AttributeError(message.format(self.__class__.__name__, key)) from None

    def __delattr__(self, key: str) -> None:
        del self._state[key]

    # Item access as well, for lifespan state used as a mapping (``state["client"]``).
    def __getitem__(self, key: str) -> Any:
        return self._state[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._state[key] = value

    def __delitem__(self, key: str) -> None:
        del self._state[key]

    def __contains__(self, key: object) -> bool:
        return key in self._state


def parse_cookies(cookie_string: str) -> dict[str, str]:
    """Parse a ``Cookie`` header as browsers send it (Starlette's ``cookie_parser``)."""
    cookies: dict[str, str] = {}
    for chunk in cookie_string.split(";"):
        key, _, value = chunk.partition("=") if "=" in chunk else ("", "", chunk)
        key, value = key.strip(), value.strip()
        if key or value:
            cookies[key] = http_cookies._unquote(value)  # the stdlib's own unquoting rules
    return cookies
