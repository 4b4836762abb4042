"""Provider rows (data, not code) and the endpoints they resolve to in an environment."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from yarl import URL

from runestone.providers.redact import remember_secret

#: openai and anthropic are spoken over HTTP here; anyllm providers are reached only
#: through any-llm (their own SDKs); mock answers in-process.
WireFormat = Literal["openai", "anthropic", "anyllm", "mock"]
AuthStyle = Literal["bearer", "x-api-key", "none"]


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """What the gateway needs to know to call a provider.

    ``base_url`` is the OpenAI-compatible base the adapter appends
    ``/chat/completions`` to. ``base_url_env`` overrides it with the meaning the
    provider's own SDK gives that variable: when the SDK takes a bare origin
    (``GROQ_BASE_URL=https://api.groq.com``), ``origin_path`` is appended to it.
    """

    name: str
    wire_format: WireFormat
    base_url: str
    api_key_env: str | None = None
    key_required: bool = True
    auth_style: AuthStyle = "bearer"
    base_url_env: str | None = None
    origin_path: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    docs: str = ""
    #: Its streams can report usage (OpenAI-compatible: it accepts
    #: ``stream_options.include_usage``): the gateway asks for usage on every stream and
    #: hides the usage chunk from clients that did not ask for it.
    stream_usage: bool = False
    #: A server of one's own (vLLM, Ollama): used only once its base URL variable is set
    #: (or it is declared in the alias file), never at a default address by surprise.
    needs_base_url: bool = False
    #: Continues a final assistant message (prefill): a cut stream can be completed
    #: there by sending what the client already has.
    prefill: bool = False
    #: Serves the Responses API itself: Responses requests pass through unchanged.
    responses: bool = False


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A provider resolved against the environment: the URL and key actually used."""

    spec: ProviderSpec
    base_url: str
    api_key: str | None
    headers: Mapping[str, str] = field(default_factory=dict)
    #: The base URL without credentials, for anything a person or a log may see.
    public_url: str = ""
    #: Whether the base URL came from the environment rather than the row's default.
    base_url_set: bool = False
    _urls: dict[str, URL] = field(default_factory=dict, repr=False, compare=False)

    def url(self, path: str) -> URL:
        """``base_url + path``, parsed once and reused for every request."""
        found = self._urls.get(path)
        if found is None:
            found = self._urls[path] = URL(self.base_url + path)
        return found

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def configured(self) -> bool:
        if self.spec.needs_base_url and not self.base_url_set:
            return False
        return self.api_key is not None or not self.spec.key_required


def resolve_endpoint(spec: ProviderSpec, environ: Mapping[str, str]) -> Endpoint:
    base = spec.base_url
    override = environ.get(spec.base_url_env) if spec.base_url_env else None
    if override:
        base = override.rstrip("/")
        if spec.origin_path and not base.endswith(spec.origin_path):
            base += spec.origin_path
    key = environ.get(spec.api_key_env) or None if spec.api_key_env else None
    headers: dict[str, str] = {"content-type": "application/json"}
    if key is not None:
        if spec.auth_style == "bearer":
            headers["authorization"] = f"Bearer {key}"
        elif spec.auth_style == "x-api-key":
            headers["x-api-key"] = key
    base = base.rstrip("/")
    public = without_userinfo(base)
    if credentials_in(base):
        # A server behind basic auth (http://user:pass@host/v1): sent as that header,
        # never in the URL (where a key's header would clash with it). With a key too,
        # the key is what is sent; the alias file and `runestone serve` refuse that pair.
        if key is None and spec.auth_style != "none":
            headers["authorization"] = basic_auth(base)
        base = public
    headers.update(spec.headers)
    if key is not None:
        remember_secret(key)
    return Endpoint(spec, base, key, headers, public, bool(override))


def credentials_in(url: str) -> bool:
    """Whether ``url`` carries ``user:password@`` (or ``user@``) before its host."""
    _, sep, rest = url.partition("://")
    return bool(sep) and "@" in rest.partition("/")[0]


def basic_auth(url: str) -> str:
    """The ``Authorization`` value for the credentials in ``url``."""
    import base64
    from urllib.parse import unquote

    userinfo = url.partition("://")[2].partition("/")[0].rpartition("@")[0]
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode()
    remember_secret(token)
    return f"Basic {token}"


def without_userinfo(url: str) -> str:
    """``http://admin:hunter2@host/v1`` -> ``http://host/v1``: never show credentials."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    authority, slash, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{slash}{path}"


class ProviderRegistry:
    """Provider specs by name, with their endpoints resolved once per snapshot."""

    def __init__(self, specs: Iterable[ProviderSpec], environ: Mapping[str, str]) -> None:
        self._specs = {spec.name: spec for spec in specs}
        self._endpoints = {name: resolve_endpoint(s, environ) for name, s in self._specs.items()}

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def names(self) -> list[str]:
        return sorted(self._specs)

    def endpoint(self, name: str) -> Endpoint | None:
        return self._endpoints.get(name)

    def with_specs(
        self, extra: Iterable[ProviderSpec], environ: Mapping[str, str]
    ) -> ProviderRegistry:
        return ProviderRegistry([*self._specs.values(), *extra], environ)
