"""The configuration schema: these models are the contract, YAML/JSON files are only a source.

Every model is frozen and rejects unknown keys, so a typo fails at start instead of being
silently ignored. Key names are camelCase to stay compatible with configs written for the
reference implementation; Python attribute names are snake_case.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Annotated, Any, Final, Literal, get_args
from urllib.parse import urlsplit

from pydantic import AliasGenerator, BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic.alias_generators import to_camel

from conduit.errors import InvalidParamsError
from conduit.security.allowlist import Allowlist, AllowlistError
from conduit.security.callers import OAUTH_CALLER_PREFIX, RESERVED_CALLER_IDS
from conduit.security.personal import BUILT_IN, CUSTOM_NAME

_ID_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
CONDUIT_PACKAGES: Final = ("workspace", "skills")
"""The packages Conduit serves itself, beside the upstreams (no upstream may take their ids)."""


class _Model(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        alias_generator=AliasGenerator(validation_alias=to_camel, serialization_alias=to_camel),
    )


class Limits(_Model):
    """Per-execution ceilings (``resourceLimits``). A request may lower them, never raise them.

    The one model of the five limits: a request's ``limits`` lower it (:meth:`lowered`), sandboxes
    receive it, and the execution tools' input schema and the isolate worker's job are derived from it
    (:meth:`request_schema`, ``model_dump(by_alias=True)``).
    """

    timeout_ms: Annotated[int, Field(gt=0, le=3_600_000)] = 30_000
    """Wall-clock time an execution may run before it is killed (-32008)."""
    memory_limit_mb: Annotated[int, Field(ge=16, le=65_536)] = 256
    """JavaScript heap ceiling in MiB; exceeding it ends the run with -32009."""
    max_output_bytes: Annotated[int, Field(gt=0, le=1 << 30)] = 1_048_576
    """stdout + stderr bytes kept before the run is killed (-32013)."""
    max_log_entries: Annotated[int, Field(gt=0, le=10_000_000)] = 10_000
    """Output lines (stdout + stderr) before the run is killed (-32014)."""
    max_tool_calls: Annotated[int, Field(gt=0, le=10_000_000)] = 1000
    """Tool calls one run may make; each call past it throws -32017 in the program, which goes on."""

    @classmethod
    def wire_names(cls) -> dict[str, str]:
        """``{"timeoutMs": "timeout_ms", ...}``: each limit's name on the wire and its attribute."""
        return {to_camel(name): name for name in cls.model_fields}

    def lowered(self, requested: Mapping[str, Any] | None) -> Limits:
        """These limits, with any requested value that is lower taking its place.

        >>> Limits().lowered({"timeoutMs": 500, "memoryLimitMb": 9999}).timeout_ms
        500

        Raises:
            InvalidParamsError: a requested value is unknown, or not a positive integer.
        """
        if not requested:
            return self
        names = self.wire_names()
        changes: dict[str, int] = {}
        for key, value in requested.items():
            if key not in names:
                raise InvalidParamsError(f"limits.{key}: unknown limit (known: {', '.join(names)})")
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise InvalidParamsError(f"limits.{key}: must be a positive integer")
            field = names[key]
            changes[field] = min(value, getattr(self, field))
        return self.model_copy(update=changes)

    @classmethod
    def request_schema(cls) -> dict[str, Any]:
        """The JSON Schema of a request's ``limits`` argument, as listed to clients: an object naming the limits
        (each a positive integer; :meth:`from_request` checks every key and value and names what is wrong)."""
        return {
            "type": "object",
            "description": f"Lower {', '.join(cls.wire_names())}.",
        }


PythonEngine = Literal["auto", "monty", "pyodide"]
PYTHON_ENGINES: Final[tuple[str, ...]] = get_args(PythonEngine)


class PoolConfig(_Model):
    """Sandboxes of one runtime kept started ahead of demand (TypeScript and Python sandboxes still run
    exactly one program each; isolate workers create a fresh V8 isolate per program)."""

    min: Annotated[int, Field(ge=0, le=64)] = 2
    """Kept ready at all times (within ``maxIdleMemoryMb``); 0 starts sandboxes only on demand."""
    max: Annotated[int, Field(ge=0, le=256)] = 8
    """Ready or starting at most, when demand is high; 0 turns the pool off (every sandbox starts cold)."""
    max_idle_memory_mb: Annotated[int, Field(ge=0, le=1 << 20)] = 1024
    """Ceiling on the memory the ready sandboxes hold together (private resident memory)."""

    @model_validator(mode="after")
    def _min_within_max(self) -> PoolConfig:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class TypeScriptPool(PoolConfig):
    max_idle_memory_mb: Annotated[int, Field(ge=0, le=1 << 20)] = 512
    """A ready TypeScript sandbox holds ~20-40 MiB."""


class PythonPool(PoolConfig):
    max: Annotated[int, Field(ge=0, le=256)] = 4
    """A Python sandbox takes ~0.4 s of CPU to start: more would not refill faster on a small machine."""


class IsolatePool(PoolConfig):
    """Isolate workers are reused (a fresh isolate per program), so ``max`` bounds all of them, busy
    ones included: at most ``max`` programs run in isolates at once without a cold start."""

    min: Annotated[int, Field(ge=0, le=64)] = 1
    max_idle_memory_mb: Annotated[int, Field(ge=0, le=1 << 20)] = 512
    """An isolate worker holds ~30-60 MiB between programs."""


class MontyPool(PoolConfig):
    """Monty workers: each runs one program and is replaced; ``max`` bounds all of them, busy ones included."""

    min: Annotated[int, Field(ge=0, le=64)] = 4
    max: Annotated[int, Field(ge=0, le=256)] = 16
    max_idle_memory_mb: Annotated[int, Field(ge=0, le=1 << 20)] = 256
    """A ready Monty worker holds ~3 MiB."""


class Pools(_Model):
    typescript: TypeScriptPool = Field(default_factory=TypeScriptPool)
    python: PythonPool = Field(default_factory=PythonPool)
    isolate: IsolatePool = Field(default_factory=IsolatePool)
    monty: MontyPool = Field(default_factory=MontyPool)


class Credentials(_Model):
    """How Conduit authenticates to an HTTP upstream. Values live only in the host process."""

    type: Literal["bearer", "apiKey", "oauth2", "tokenExchange"]
    """``tokenExchange``: each OAuth caller's own access token exchanged (RFC 8693) for one meant for this
    upstream (``tokenUrl``, ``clientId``, ``clientSecret``, ``audience``, ``resource``, ``scopes``)."""
    bearer_token: SecretStr | None = None
    api_key: SecretStr | None = None
    header_name: str = "X-API-Key"
    """apiKey: the header carrying the key (``Authorization`` sends it as the whole header value)."""
    client_id: str | None = None
    client_secret: SecretStr | None = None
    token_url: str | None = None
    refresh_token: SecretStr | None = None
    scopes: list[str] = Field(default_factory=list)
    token_request_format: Literal["form", "json"] = "form"
    token_params: dict[str, str] = Field(default_factory=dict)
    audience: str | None = None
    """tokenExchange: the ``audience`` the exchanged token is for (the upstream, as its authorization server
    names it)."""
    resource: str | None = None
    """tokenExchange: the ``resource`` (RFC 8707) the exchanged token is for."""

    @model_validator(mode="after")
    def _required_fields(self) -> Credentials:
        if self.type == "bearer" and self.bearer_token is None:
            raise ValueError("credentials of type 'bearer' need 'bearerToken'")
        if self.type == "apiKey" and self.api_key is None:
            raise ValueError("credentials of type 'apiKey' need 'apiKey'")
        if self.type in ("oauth2", "tokenExchange") and (self.token_url is None or self.client_id is None):
            raise ValueError(f"credentials of type {self.type!r} need 'tokenUrl' and 'clientId'")
        if self.type == "tokenExchange" and self.refresh_token is not None:
            raise ValueError("credentials of type 'tokenExchange' take no 'refreshToken': the caller's token is used")
        return self

    def secret_values(self) -> list[str]:
        """Every secret this block holds, for log redaction."""
        secrets = (self.bearer_token, self.api_key, self.client_secret, self.refresh_token)
        return [s.get_secret_value() for s in secrets if s is not None and s.get_secret_value()]


class UpstreamAuthorization(_Model):
    """How a principal connects its own account on a ``credentials: perPrincipal`` upstream, on demand: the
    authorization server is found from the upstream's 401 and its protected-resource metadata; Conduit is the
    OAuth client (pre-registered, or by its Client ID Metadata Document, or registered dynamically)."""

    client_id: str | None = None
    """A client registered with the authorization server for ``<http.publicUrl>/oauth/callback`` (unset: a
    Client ID Metadata Document when ``clientMetadataUrl`` is set and the server supports one, else dynamic
    client registration)."""
    client_secret: SecretStr | None = None
    scopes: list[str] | None = None
    """Scopes to ask for (unset: those the upstream's metadata lists, else the server's)."""
    client_metadata_url: str | None = None
    """The HTTPS URL of Conduit's Client ID Metadata Document, used as its client id where the server supports
    those."""
    timeout_ms: Annotated[int, Field(ge=10_000, le=3_600_000)] = 300_000
    """How long a started connection flow stays valid (at most 10 minutes are kept) and a call waits for it."""


class UpstreamConfig(_Model):
    """One upstream MCP server whose tools Conduit exposes."""

    id: Annotated[str, Field(pattern=_ID_PATTERN)]
    """Namespace of the upstream's tools: ``<id>__<tool>`` over MCP, ``tools.<id>.<tool>`` in programs."""
    type: Literal["stdio", "streamableHttp", "sse", "http"] = "stdio"
    command: str | None = None
    """stdio: the executable. Looked up beside Conduit's own interpreter, then on PATH."""
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    """stdio: the only variables passed besides a minimal safe set (PATH, HOME, LANG...)."""
    cwd: str | None = None
    url: str | None = None
    """streamableHttp / sse / http: the endpoint."""
    headers: dict[str, str] = Field(default_factory=dict)
    credentials: Credentials | Literal["perPrincipal"] | None = None
    """A credentials block used for every caller, or ``perPrincipal``: each principal's calls go out with
    that principal's own credential from the credential store (``conduit auth --principal``)."""
    authorization: UpstreamAuthorization | None = None
    """With ``credentials: perPrincipal``: a principal without a credential connects its own account at a URL
    Conduit gives it (an authorization code flow with PKCE ending at ``/oauth/callback``)."""
    timeout_ms: Annotated[int, Field(gt=0, le=3_600_000)] = 60_000
    """Per-call timeout for this upstream's tools."""
    tools_cache_ttl_ms: Annotated[int, Field(ge=0, le=86_400_000)] = 300_000
    """How long the upstream's tool list is trusted before it is listed again (0: until it reconnects or
    sends notifications/tools/list_changed, which always triggers a new listing)."""
    connect_timeout_ms: Annotated[int, Field(gt=0, le=600_000)] = 20_000
    """Time allowed to start (stdio) or reach (HTTP) the upstream and list its tools."""

    @property
    def per_principal(self) -> bool:
        """Each principal's calls go out on a connection of its own: with its stored credential
        (``perPrincipal``), or with its own access token exchanged (``type: tokenExchange``)."""
        return self.credentials == "perPrincipal" or self.exchanges_tokens

    @property
    def exchanges_tokens(self) -> bool:
        return isinstance(self.credentials, Credentials) and self.credentials.type == "tokenExchange"

    @model_validator(mode="after")
    def _transport_fields(self) -> UpstreamConfig:
        if self.authorization is not None and self.credentials != "perPrincipal":
            raise ValueError("'authorization' connects principals' own accounts: it needs 'credentials: perPrincipal'")
        if self.per_principal and self.type == "stdio":
            which = "credentials of type 'tokenExchange'" if self.exchanges_tokens else "'credentials: perPrincipal'"
            raise ValueError(f"{which} needs an HTTP upstream (stdio upstreams take 'env')")
        if "__" in self.id:
            raise ValueError(f"upstream id {self.id!r} must not contain '__' (it separates id and tool name)")
        if self.id in CONDUIT_PACKAGES:
            raise ValueError(f"upstream id {self.id!r} is Conduit's own package: choose another id")
        if self.type == "stdio":
            if not self.command:
                raise ValueError("a 'stdio' upstream needs 'command'")
            if self.url is not None:
                raise ValueError("a 'stdio' upstream takes 'command', not 'url'")
        else:
            if not self.url:
                raise ValueError(f"a '{self.type}' upstream needs 'url'")
            if self.command is not None:
                raise ValueError(f"a '{self.type}' upstream takes 'url', not 'command'")
        return self


class Policy(_Model):
    """What a caller may do: the ceilings a principal's requests run under."""

    allowed_tools: list[str] = Field(default_factory=lambda: ["*"])
    """Tools it may see and call; a request's ``allowedTools`` is intersected with these."""
    upstreams: list[str] | None = None
    """Upstreams it may use at all (unset: every upstream); narrows ``allowedTools``."""
    limits: dict[str, int] = Field(default_factory=dict)
    """Ceilings below ``resourceLimits`` (``timeoutMs``, ``memoryLimitMb``, ...); a request lowers them further."""
    rate_limit: str | None = None
    """Its executions and proxied tool calls (``limits`` syntax); unset: the server's ``rateLimit``."""
    tool_call_rate_limit: str | None = None
    """Its programs' tool calls, per upstream (``limits`` syntax); unset: the server's ``toolCallRateLimit``."""
    max_concurrent: Annotated[int, Field(ge=1, le=1024)] | None = None
    """Its executions running at once (within the server's ``maxConcurrent``); unset: no share of its own."""

    @field_validator("allowed_tools")
    @classmethod
    def _patterns_parse(cls, patterns: list[str]) -> list[str]:
        return _allowlist_patterns(patterns)

    @field_validator("limits")
    @classmethod
    def _limits_known(cls, limits: dict[str, int]) -> dict[str, int]:
        try:
            Limits().lowered(limits)
        except InvalidParamsError as exc:
            raise ValueError(exc.message) from None
        return limits

    @field_validator("rate_limit", "tool_call_rate_limit")
    @classmethod
    def _rate_limit_parses(cls, spec: str | None) -> str | None:
        return None if spec is None else _parse_rate_limit(spec)


ANNOTATION_HINTS: Final = ("readOnlyHint", "destructiveHint", "idempotentHint", "openWorldHint")


class ApprovalRule(_Model):
    """Tool calls of programs that wait for a person's approval: those of ``tools`` (allowlist patterns),
    or of tools whose annotations say what ``annotations`` says, made for ``principals`` (unset: anyone)."""

    tools: list[str] | None = None
    """Patterns like ``allowedTools``: ``"github.delete_repo"``, ``"payments.*"``."""
    annotations: dict[str, bool] | None = None
    """``{destructiveHint: true}``: the tool's annotations must say each of these (``readOnlyHint``,
    ``destructiveHint``, ``idempotentHint``, ``openWorldHint``); a tool that says nothing matches none."""
    principals: list[str] | None = None
    """Callers whose calls the rule covers: principal ids, ``oauth:<claim>`` for an OAuth caller, ``master``,
    ``local`` (stdio's); unset: everyone's."""
    timeout_ms: Annotated[int, Field(ge=1000, le=3_600_000)] = 120_000
    """How long the person has to answer; no answer declines. The program's own timeout keeps running."""

    @model_validator(mode="after")
    def _matches_something(self) -> ApprovalRule:
        if (self.tools is None) == (self.annotations is None):
            raise ValueError("an approval rule matches on exactly one of 'tools' and 'annotations'")
        if self.tools is not None:
            _allowlist_patterns(self.tools, "tools: ")
        if self.annotations is not None:
            unknown = sorted(set(self.annotations) - set(ANNOTATION_HINTS))
            if unknown or not self.annotations:
                raise ValueError(
                    f"annotations takes {', '.join(ANNOTATION_HINTS)} (not {', '.join(unknown) or 'none'})"
                )
        return self


class PrincipalConfig(Policy):
    """A caller known by an API key (``Authorization: Bearer <key>`` over HTTP)."""

    id: Annotated[str, Field(pattern=_ID_PATTERN)]
    """Its name in audit records, logs, metrics and the credential store; not ``master`` or ``local`` (in any
    case), and unique among principals whatever the case."""
    api_key: SecretStr | None = None
    """Its key (at least 16 characters); prefer ``apiKeySha256`` so the file holds no secret."""
    api_key_sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")] | None = None
    """The SHA-256 (hex) of its key: ``printf %s KEY | sha256sum``."""

    @model_validator(mode="after")
    def _one_key(self) -> PrincipalConfig:
        if self.id.casefold() in RESERVED_CALLER_IDS:
            raise ValueError(f"principal id {self.id!r} is reserved (master and local are Conduit's own callers)")
        if (self.api_key is None) == (self.api_key_sha256 is None):
            raise ValueError(f"principal {self.id!r} needs exactly one of 'apiKey' and 'apiKeySha256'")
        if self.api_key is not None and len(self.api_key.get_secret_value()) < 16:
            raise ValueError(f"principal {self.id!r}: apiKey must be at least 16 characters")
        return self


class OAuthPolicy(Policy):
    """The policy of OAuth callers whose token has ``scope`` (in its ``scope``/``scp`` claim) or ``claim``.

    Such a caller is ``oauth:<principal claim>``, a caller of its own, unless ``principal`` says it is an
    API-key principal."""

    scope: str | None = None
    claim: dict[str, str] | None = None
    """``{name: value}``: the token's claim ``name`` equals ``value`` (or is a list holding it)."""
    principal: str | None = None
    """The id of an ``auth.principals`` entry the matching tokens act as: the same caller, with its policy,
    credentials, runs and limits. Only with a ``claim`` that names the principal claim's value (one person),
    and without policy keys of its own (the principal's policy applies)."""

    @model_validator(mode="after")
    def _one_match(self) -> OAuthPolicy:
        if (self.scope is None) == (self.claim is None):
            raise ValueError("a policy matches on exactly one of 'scope' and 'claim'")
        own = sorted(to_camel(name) for name in self.model_fields_set & set(Policy.model_fields))
        if self.principal is not None and own:
            raise ValueError(
                f"a policy with 'principal' takes {self.principal!r}'s own policy; remove {', '.join(own)}"
            )
        return self


SigningAlgorithm = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
DEFAULT_ALGORITHMS: Final[tuple[SigningAlgorithm, ...]] = ("RS256", "ES256", "EdDSA")


class OAuthConfig(_Model):
    """Conduit as an OAuth 2.1 resource server: JWT access tokens from ``issuer`` select a principal."""

    issuer: str
    """The authorization server; tokens must carry it as ``iss``."""
    audience: str
    """Tokens must carry it in ``aud``: this server's canonical MCP URL (RFC 8707), e.g.
    ``https://conduit.example.com/mcp``."""
    resource: str | None = None
    """The resource named in the protected-resource metadata; default: ``audience``."""
    jwks_url: str | None = None
    """The issuer's JSON Web Key Set; default: ``jwks_uri`` from the issuer's metadata."""
    principal_claim: str = "sub"
    """The claim whose value is the principal's id."""
    policies: list[OAuthPolicy] = Field(default_factory=list)
    """Tried in order; the first that matches is the caller's policy. A token that matches none is refused (401)."""
    algorithms: list[SigningAlgorithm] = Field(default_factory=lambda: list(DEFAULT_ALGORITHMS))
    """Signature algorithms accepted (asymmetric only: ``none`` and shared-secret HMAC never are)."""
    jwks_cache_ttl_ms: Annotated[int, Field(ge=0, le=86_400_000)] = 600_000
    """How long fetched keys are trusted (0: 30 s); a token signed by an unknown key id fetches them again
    (at most once every 30 s)."""
    leeway_ms: Annotated[int, Field(ge=0, le=300_000)] = 30_000
    """Clock skew allowed on ``exp`` and ``nbf``."""

    @model_validator(mode="after")
    def _urls(self) -> OAuthConfig:
        for index, policy in enumerate(self.policies):
            if policy.principal is not None and self.principal_claim not in (policy.claim or {}):
                raise ValueError(
                    f"policies[{index}]: 'principal: {policy.principal}' needs a 'claim' naming "
                    f"{self.principal_claim!r} (the one person whose tokens act as that principal)"
                )
        for name, value in (("issuer", self.issuer), ("resource", self.resource or self.audience)):
            if not re.match(r"^https?://[^/\s]+", value):
                raise ValueError(
                    f"{name} must be an http(s) URL (the resource defaults to the audience), not {value!r}"
                )
        return self


class CredentialStoreConfig(_Model):
    """Where per-principal upstream credentials are kept, encrypted at rest."""

    path: str = "conduit-credentials.enc"
    """The store file (relative to the config file's directory); written with mode 0600."""
    key: SecretStr
    """A Fernet key (``conduit auth --new-store-key`` prints one); keep it in an environment variable."""


class AuthConfig(_Model):
    """Who the HTTP callers are. Without principals or OAuth, only the master token is accepted."""

    principals: list[PrincipalConfig] = Field(default_factory=list)
    oauth: OAuthConfig | None = None
    credential_store: CredentialStoreConfig | None = None

    @field_validator("principals")
    @classmethod
    def _unique_principals(cls, principals: list[PrincipalConfig]) -> list[PrincipalConfig]:
        _check_unique("principal", [principal.id.casefold() for principal in principals])
        return principals

    @model_validator(mode="after")
    def _mapped_principals_exist(self) -> AuthConfig:
        known = {principal.id for principal in self.principals}
        for index, policy in enumerate(self.oauth.policies if self.oauth is not None else []):
            if policy.principal is not None and policy.principal not in known:
                raise ValueError(f"oauth.policies[{index}].principal: no principal {policy.principal!r} in principals")
        return self

    def is_caller_id(self, caller_id: str) -> bool:
        """Whether ``caller_id`` can name a caller of this config: a principal, an OAuth caller, master or local."""
        if caller_id in RESERVED_CALLER_IDS or any(principal.id == caller_id for principal in self.principals):
            return True
        return self.oauth is not None and caller_id.startswith(OAUTH_CALLER_PREFIX) and caller_id != OAUTH_CALLER_PREFIX


WallName = Literal[
    "process-group", "cgroup-memory", "cgroup-pids", "landlock", "no-new-privs", "rlimit-cpu", "unprivileged-uid"
]
"""The OS walls around sandbox processes (``conduit.sandbox.walls``), as ``isolation.require`` names them."""


class IsolationConfig(_Model):
    """OS walls around every sandbox process, used wherever this machine offers them."""

    enabled: bool = True
    """false: only the runtimes' own sandboxes and a process group (for comparison; never in production)."""
    require: list[WallName] = Field(default_factory=list)
    """Walls Conduit must have: it refuses to start when one is unavailable (``conduit doctor`` says why)."""


class NetworkConfig(_Model):
    """Where outbound HTTP (remote upstreams, token endpoints) may go besides the public internet."""

    allow_private_networks: bool = False
    """Allow loopback, RFC 1918, unique-local and CGNAT addresses (local development)."""
    allowed_hosts: list[str] = Field(default_factory=list)
    """Host names (``api.internal``, ``*.corp.example``) reachable whatever they resolve to."""
    allowed_networks: list[str] = Field(default_factory=list)
    """CIDRs reachable whatever they are (``10.20.0.0/16``, ``169.254.169.254/32``)."""

    @field_validator("allowed_networks")
    @classmethod
    def _networks_parse(cls, networks: list[str]) -> list[str]:
        return _check_networks(networks)


class HttpConfig(_Model):
    """The Streamable HTTP front end behind a proxy or load balancer."""

    stateless: bool | None = None
    """Serve handshake-era clients without MCP sessions, so any replica can answer any request (the SDK's
    stateless mode; progress still streams over each request's SSE answer). Unset: stateless exactly when
    ``cluster.redisUrl`` is set. A stateless server cannot send a request back to a handshake-era client."""
    drain_delay_ms: Annotated[int, Field(ge=0, le=600_000)] = 0
    """After SIGTERM, how long new work is still accepted while ``/ready`` already answers 503 (the time a
    load balancer or Kubernetes needs to stop sending); then new requests get 503 with ``Retry-After``."""
    drain_timeout_ms: Annotated[int, Field(ge=0, le=3_600_000)] = 30_000
    """After the drain delay, how long requests in flight may take to finish before the server stops."""

    max_body_bytes: Annotated[int, Field(ge=1024, le=1 << 30)] = 4 * 1024 * 1024
    """The largest request body accepted, on every path: a larger one is answered 413 before anything reads or
    parses it, and nothing beyond this is buffered. A program travels in one, so keep it above ``maxCodeBytes``."""
    public_url: str | None = None
    """The base URL clients and browsers reach this server at (``https://conduit.example.com``): the redirect of
    users connecting their own upstream accounts is ``<publicUrl>/oauth/callback``. Unset: the address it
    listens on."""
    trusted_proxies: list[str] = Field(default_factory=list)
    """Addresses or CIDRs of the proxies whose ``X-Forwarded-For`` / ``X-Forwarded-Proto`` name the real
    client (uvicorn's forwarded-allow-ips). Empty (the default): those headers are ignored from everyone,
    so a client cannot pose as another address; the connection's peer is the client."""

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_parse(cls, proxies: list[str]) -> list[str]:
        return _check_networks(proxies)

    @field_validator("public_url")
    @classmethod
    def _public_url_is_a_base(cls, url: str | None) -> str | None:
        if url is None:
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(f"must be an http(s) base URL such as https://conduit.example.com, not {url!r}")
        return url.rstrip("/")


class BackgroundConfig(_Model):
    """Executions started with ``"background": true``: answered at once with an ``executionId``, followed with
    ``conduit__mcp_execution_status`` and stopped with ``conduit__mcp_cancel_execution``."""

    max_timeout_ms: Annotated[int, Field(gt=0, le=86_400_000)] = 600_000
    """The time limit of a background run, and its default (a request and a principal's ceiling lower it);
    ``resourceLimits.timeoutMs`` stays the foreground's. A sandbox's CPU time stays bounded by its
    ``RLIMIT_CPU`` (``resourceLimits.timeoutMs`` + 60 s): long runs are expected to wait on tools."""
    keep_ms: Annotated[int, Field(ge=1000, le=7 * 86_400_000)] = 3_600_000
    """How long a finished run's outcome is kept for its principal; then it is dropped."""
    max_per_principal: Annotated[int, Field(ge=1, le=10_000)] = 32
    """Background runs a principal may have running at once (they also count against ``maxConcurrent``)."""


class ClusterConfig(_Model):
    """Replicas behind a load balancer sharing their state in Redis. Without ``redisUrl``: one process,
    everything in its memory."""

    redis_url: SecretStr | None = None
    """``redis://[:password@]host:port/db`` (or ``rediss://``). Rate-limit counters, per-principal
    credentials and OAuth tokens live there, shared by every replica."""
    on_store_error: Literal["local", "refuse"] = "local"
    """While Redis is unreachable: ``local`` goes on with each replica's own memory (rate limits count per
    replica, a token refresh is locked per replica); ``refuse`` refuses work that needs the shared state
    (-32000, retry later). Either way Redis is tried again within a second and used as soon as it answers."""
    key: SecretStr | None = None
    """A Fernet key (``conduit auth --new-store-key`` prints one) encrypting the OAuth tokens kept in Redis;
    required with ``redisUrl``, the same on every replica."""
    key_prefix: Annotated[str, Field(min_length=1, max_length=64)] = "conduit:"
    """Prefix of every Redis key Conduit writes (several deployments can share one Redis)."""

    @model_validator(mode="after")
    def _key_with_redis(self) -> ClusterConfig:
        if self.redis_url is not None and self.key is None:
            raise ValueError("cluster.redisUrl needs cluster.key (a Fernet key: `conduit auth --new-store-key`)")
        if self.key is not None:
            _check_fernet_key(self.key.get_secret_value(), "cluster.key")
        return self


STATE_SCHEMES: Final = ("sqlite:///", "postgresql://", "postgres://")


class StateConfig(_Model):
    """Where what outlives a run is kept (workspaces, saved skills): a real database, embedded by default."""

    url: SecretStr | None = None
    """``sqlite:///PATH`` (relative to the config file's directory) or ``postgresql://user:pass@host:port/db``
    (for several replicas). Unset: ``sqlite:///conduit-state.db`` beside the config file, created on first use.
    Schema migrations run at start; a store written by an older version is migrated, never dropped."""

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None and not url.get_secret_value().startswith(STATE_SCHEMES):
            raise ValueError(f"must start with {' or '.join(STATE_SCHEMES)}")
        return url

    @property
    def is_sqlite(self) -> bool:
        return self.url is None or self.url.get_secret_value().startswith("sqlite://")


class WorkspaceConfig(_Model):
    """Each principal's workspace: files its programs write and read across runs (``tools.workspace.*``)."""

    enabled: bool = True
    quota_bytes: Annotated[int, Field(gt=0, le=1 << 40)] = 64 * 1024 * 1024
    """Bytes a principal's files may hold together; a write past it fails (-32016) and writes nothing."""
    max_files: Annotated[int, Field(gt=0, le=10_000_000)] = 10_000
    """Files a principal may keep."""
    max_file_bytes: Annotated[int, Field(gt=0, le=1 << 30)] = 8 * 1024 * 1024
    """Largest file, in bytes (of its content, not its base64 form)."""
    ttl_days: Annotated[int, Field(gt=0, le=36_500)] | None = None
    """Files not written for this many days are removed (unset: kept until deleted)."""


class SkillsConfig(_Model):
    """Programs saved by name and called like tools (``tools.skills.<name>``, ``skills__<name>``)."""

    enabled: bool = True
    dir: str | None = None
    """A read-only directory of curated skills shipped to every caller: one file per skill (``.ts``, ``.js``,
    ``.py``) with a front-matter header (relative to the config file's directory)."""


BuiltInKind = Literal["email", "phone", "credit_card", "iban", "ipv4", "ipv6", "us_ssn"]


class CustomKind(_Model):
    """An operator's own kind of personal value: ``{name: employee_id, pattern: "E\\d{6}"}`` makes tokens like
    ``[EMPLOYEE_ID_3]``."""

    name: Annotated[str, Field(pattern=CUSTOM_NAME)]
    pattern: str
    """A Python regular expression; each non-empty match is one value (matches never span lines in output that
    is streamed in pieces longer than a line)."""

    @field_validator("name")
    @classmethod
    def _not_built_in(cls, name: str) -> str:
        if name in BUILT_IN:
            raise ValueError(f"{name!r} is a built-in kind: list it by name instead")
        return name

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, pattern: str) -> str:
        try:
            compiled = re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        if compiled.fullmatch(""):
            raise ValueError("matches the empty string: every position would be a value")
        return pattern


class PrivacyConfig(_Model):
    """Personal values in what leaves for the client (so the model) become tokens such as ``[EMAIL_7]``, and
    tokens in tool calls' arguments become the values again on the way to the upstream (docs/PRIVACY.md)."""

    tokenize: list[BuiltInKind | CustomKind] = Field(default_factory=list)
    """The kinds to tokenise (empty: off): built-in ones by name, custom ones as ``{name, pattern}``."""
    ttl_ms: Annotated[int, Field(ge=1000, le=366 * 86_400_000)] = 86_400_000
    """How long a token can be restored after its value was last seen (the same value keeps its token)."""
    principals: list[str] | None = None
    """Whom it applies to (caller ids: principals, ``master``, ``local``; unset: everyone)."""
    exempt: list[str] = Field(default_factory=list)
    """Tools (allowlist patterns) whose arguments are never restored: tokens reach them as text."""
    approval_forms: Literal["tokens", "values"] = "tokens"
    """What a person asked to approve a call sees of personal values: their tokens, or the values themselves
    (tokens in the arguments restored for the form)."""
    max_values: Annotated[int, Field(ge=100, le=10_000_000)] = 50_000
    """Values remembered per principal; past it the oldest are forgotten (their tokens restore nothing)."""

    @field_validator("tokenize")
    @classmethod
    def _unique_kinds(cls, kinds: list[BuiltInKind | CustomKind]) -> list[BuiltInKind | CustomKind]:
        _check_unique("kind", [kind if isinstance(kind, str) else kind.name for kind in kinds])
        return kinds

    @field_validator("exempt")
    @classmethod
    def _exempt_parses(cls, patterns: list[str]) -> list[str]:
        return _allowlist_patterns(patterns)

    @property
    def enabled(self) -> bool:
        return bool(self.tokenize)


class TracingConfig(_Model):
    """OpenTelemetry traces: a span per execution, a child span per tool call. Off without an endpoint."""

    otlp_endpoint: str | None = None
    """Base URL of an OTLP/HTTP collector (spans go to ``<url>/v1/traces``). Unset: the standard
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT`` variables, else no tracing."""
    service_name: str = "conduit"


class Config(_Model):
    """The whole of Conduit's configuration."""

    transport: Literal["http", "stdio"] = "http"
    """How MCP clients reach Conduit: Streamable HTTP or stdio."""
    host: str = "127.0.0.1"
    """HTTP bind address. Keep it on loopback unless a proxy with TLS sits in front."""
    http: HttpConfig = Field(default_factory=HttpConfig)
    port: Annotated[int, Field(ge=0, le=65_535)] = 3000
    """HTTP port for ``/mcp`` (0 picks a free one and prints it)."""
    ops_enabled: bool = True
    """Serve ``/health`` and ``/metrics``. In stdio mode a busy ops port only logs a warning."""
    ops_host: str = "127.0.0.1"
    ops_port: Annotated[int, Field(ge=0, le=65_535)] = 3001
    """Port for ``/health`` and ``/metrics`` (0 picks a free one and prints it)."""
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["auto", "json", "text"] = "auto"
    """JSON lines, readable text, or auto: text on a terminal, JSON otherwise. Logs always go to stderr."""
    ipc_bearer_token: SecretStr | None = None
    """Master token for HTTP clients and the sandbox bridge. Generated at start when unset."""
    max_concurrent: Annotated[int, Field(ge=1, le=1024)] = 10
    """Executions running at once."""
    max_queue: Annotated[int, Field(ge=0, le=100_000)] = 100
    """Executions waiting for a slot; beyond this, new ones are refused as busy (-32000)."""
    rate_limit: str = "1200/minute"
    """Executions and proxied tool calls per HTTP client address (``limits`` syntax: ``"120/minute;2000/hour"``;
    empty: unlimited). Discovery, initialisation, pings and following or cancelling a background run are never
    counted; stdio is never limited. Programs' own tool calls count against ``toolCallRateLimit`` instead."""
    tool_call_rate_limit: str = "3000/minute"
    """Tool calls that programs make, per caller and upstream (``limits`` syntax; empty: unlimited): one
    caller's loops cannot flood an upstream that others share. A call over it throws -32000 in the program
    (with when to retry); the run goes on. The stdio caller is never limited."""
    max_code_bytes: Annotated[int, Field(gt=0, le=16 * 1024 * 1024)] = 256 * 1024
    """Largest program accepted, in UTF-8 bytes."""
    resource_limits: Limits = Field(default_factory=Limits)
    default_allowed_tools: list[str] = Field(default_factory=lambda: ["*"])
    """Allowlist used when an execution request names none."""
    validation_mode: Literal["permissive", "strict"] = "permissive"
    """permissive: check tool arguments wherever the tool has a schema; strict: also refuse tools without one."""
    code_mode_only: bool = False
    """List only Conduit's own tools to MCP clients, not the proxied ``<upstream>__<tool>`` ones."""
    secret_redaction_patterns: list[str] = Field(default_factory=list)
    """Extra regular expressions whose matches are scrubbed from logs."""
    redact_credentials: bool = True
    """Scrub credential-shaped strings from logs: bearer tokens, JWTs, known API-key formats, private keys,
    ``password=...``-style values (configured secrets are always scrubbed)."""
    redact_pii: bool = True
    """Scrub PII from logs: emails, phone numbers, Luhn-valid card numbers, national ids."""
    deno_path: str | None = None
    """Deno executable. Default: the one installed by PyPI's ``deno`` package."""
    pyodide_path: str | None = None
    """Directory of Pyodide's npm package. Default: the one ``make setup`` installs in the virtualenv."""
    python_engine: PythonEngine = "auto"
    """Which engine runs Python programs whose request names none: ``auto`` (Monty when the program is
    within what Monty runs, decided before it runs; Pyodide otherwise), ``monty`` or ``pyodide``."""
    monty_path: str | None = None
    """The ``monty`` worker binary. Default: the one ``pydantic-monty`` installs in the virtualenv."""
    pools: Pools = Field(default_factory=Pools)
    tracing: TracingConfig = Field(default_factory=TracingConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    isolation: IsolationConfig = Field(default_factory=IsolationConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    background: BackgroundConfig = Field(default_factory=BackgroundConfig)
    state: StateConfig = Field(default_factory=StateConfig)
    workspace: WorkspaceConfig = Field(default_factory=WorkspaceConfig)
    skills: SkillsConfig = Field(default_factory=SkillsConfig)
    privacy: PrivacyConfig = Field(default_factory=PrivacyConfig)
    upstreams: list[UpstreamConfig] = Field(default_factory=list)
    approvals: list[ApprovalRule] = Field(default_factory=list)
    """Programs' tool calls that wait for a person's approval (MCP elicitation); see docs/CODE_MODE.md."""

    @field_validator("ipc_bearer_token")
    @classmethod
    def _token_strength(cls, token: SecretStr | None) -> SecretStr | None:
        if token is None or token.get_secret_value() == "":
            return None
        if len(token.get_secret_value()) < 16:
            raise ValueError("must be at least 16 characters (or unset, to have one generated)")
        return token

    @field_validator("rate_limit", "tool_call_rate_limit")
    @classmethod
    def _rate_limit_parses(cls, spec: str) -> str:
        return _parse_rate_limit(spec)

    @field_validator("secret_redaction_patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for index, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {index} is not a valid regular expression: {exc}") from None
        return patterns

    @field_validator("upstreams")
    @classmethod
    def _unique_ids(cls, upstreams: list[UpstreamConfig]) -> list[UpstreamConfig]:
        _check_unique("upstream", [upstream.id for upstream in upstreams])
        return upstreams

    @model_validator(mode="after")
    def _shared_state_for_replicas(self) -> Config:
        if self.cluster.redis_url is not None and self.keeps_state and self.state.is_sqlite:
            raise ValueError(
                "cluster mode keeps workspaces and skills in a database every replica reaches: set state.url to a "
                "postgresql:// URL (or turn workspace.enabled and skills.enabled off)"
            )
        return self

    @property
    def keeps_state(self) -> bool:
        """Whether anything outlives a run (a workspace or saved skills), kept in ``state``."""
        return self.workspace.enabled or self.skills.enabled

    @model_validator(mode="after")
    def _code_fits_in_a_body(self) -> Config:
        if self.max_code_bytes >= self.http.max_body_bytes:
            raise ValueError(
                f"maxCodeBytes ({self.max_code_bytes}) must be below http.maxBodyBytes ({self.http.max_body_bytes}): "
                "a program is sent in one request body"
            )
        return self

    @model_validator(mode="after")
    def _approval_principals_known(self) -> Config:
        for index, rule in enumerate(self.approvals):
            for name in rule.principals or []:
                if not self.auth.is_caller_id(name):
                    raise ValueError(
                        f"approvals[{index}].principals: {name!r} is no caller here (a principal's id, "
                        "oauth:<claim> with auth.oauth, master or local)"
                    )
        return self

    @model_validator(mode="after")
    def _store_for_per_principal_upstreams(self) -> Config:
        stored = [upstream for upstream in self.upstreams if upstream.per_principal and not upstream.exchanges_tokens]
        if self.auth.credential_store is None and stored:
            raise ValueError("an upstream with 'credentials: perPrincipal' needs 'auth.credentialStore'")
        if self.auth.oauth is None and any(upstream.exchanges_tokens for upstream in self.upstreams):
            raise ValueError(
                "credentials of type 'tokenExchange' exchange OAuth callers' access tokens: configure auth.oauth"
            )
        return self

    def secret_values(self) -> list[str]:
        """Every configured secret, for log redaction."""
        values = [self.ipc_bearer_token.get_secret_value()] if self.ipc_bearer_token else []
        for upstream in self.upstreams:
            if isinstance(upstream.credentials, Credentials):
                values.extend(upstream.credentials.secret_values())
        values.extend(p.api_key.get_secret_value() for p in self.auth.principals if p.api_key is not None)
        if self.auth.credential_store is not None:
            values.append(self.auth.credential_store.key.get_secret_value())
        values.extend(secret.get_secret_value() for secret in (self.cluster.redis_url, self.cluster.key) if secret)
        if self.state.url is not None and (password := urlsplit(self.state.url.get_secret_value()).password):
            values.append(password)
        return values

    @property
    def stateless_http(self) -> bool:
        """Whether handshake-era HTTP clients are served without sessions (``http.stateless``)."""
        return self.http.stateless if self.http.stateless is not None else self.cluster.redis_url is not None


def _check_networks(networks: list[str]) -> list[str]:
    """``networks`` if each is an address or a CIDR; else which entry is not, and why."""
    for index, network in enumerate(networks):
        try:
            ipaddress.ip_network(network, strict=False)
        except ValueError as exc:
            raise ValueError(f"entry {index}: {exc}") from None
    return networks


def _check_fernet_key(key: str, name: str) -> None:
    import base64
    import binascii

    try:
        valid = len(base64.urlsafe_b64decode(key.encode("ascii"))) == 32
    except (binascii.Error, ValueError, UnicodeEncodeError):
        valid = False
    if not valid:
        raise ValueError(f"{name} is not a Fernet key (32 url-safe base64 bytes; `conduit auth --new-store-key`)")


def _allowlist_patterns(patterns: list[str], where: str = "") -> list[str]:
    """``patterns`` if they parse as an allowlist; else a ValueError saying why (after ``where``)."""
    try:
        Allowlist.parse(patterns)
    except AllowlistError as exc:
        raise ValueError(f"{where}{exc}") from None
    return patterns


def _check_unique(kind: str, ids: list[str]) -> None:
    seen: set[str] = set()
    for item in ids:
        if item in seen:
            raise ValueError(f"{kind} id {item!r} is used twice")
        seen.add(item)


def _parse_rate_limit(spec: str) -> str:
    from limits import parse_many

    if spec.strip():
        try:
            parse_many(spec)
        except ValueError as exc:
            raise ValueError(f"not a rate limit like '120/minute;2000/hour': {exc}") from None
    return spec
