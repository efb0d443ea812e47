"""The one exception tree of `vector_hooks`, so a service catches one base and branches on kind.

    VectorHooksError
    ├── ConfigurationError            a hook, pipeline or adapter is set up wrongly
    │   ├── HookNotFound              no hook is registered under that name
    │   ├── HookConfigError           a hook's configuration is invalid
    │   └── PipelineConfigError       a pipeline value (e.g. from the flag) is invalid
    ├── RequestRefused                the call did not run, or its results were withheld
    │   ├── InvalidTenantId           the tenant id is outside the documented alphabet/length
    │   ├── InvalidFilter             the caller's filter could escape the tenant condition
    │   ├── UnsafeArgument            an argument would bypass tenant isolation
    │   │   └── TenantOwnershipError  a write names ids (primary keys, UUIDs) another tenant owns
    │   ├── TenantIsolationError      isolation missing, or a backend returned a foreign row
    │   └── SecurityHookFailed        a security hook failed, so the search failed closed
    └── BackendError                  the vector database failed (translated by the adapters)
        ├── BackendUnavailable        cannot connect / connection closed
        ├── BackendTimeout            the backend did not answer in time
        ├── BackendPermissionDenied   the backend refused the credentials
        └── BackendRequestError       the backend rejected the request (schema, syntax, ...)

Only the adapters (`vector_hooks.backends.milvus`, `vector_hooks.backends.weaviate`) translate
pymilvus / weaviate-client exceptions into `BackendError` subclasses, always `from` the original.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendPermissionDenied",
    "BackendRequestError",
    "BackendTimeout",
    "BackendUnavailable",
    "ConfigurationError",
    "HookConfigError",
    "HookNotFound",
    "InvalidFilter",
    "InvalidTenantId",
    "PipelineConfigError",
    "RequestRefused",
    "SecurityHookFailed",
    "TenantIsolationError",
    "TenantOwnershipError",
    "UnsafeArgument",
    "VectorHooksError",
]


class VectorHooksError(Exception):
    """Base of every error `vector_hooks` raises on purpose."""


class ConfigurationError(VectorHooksError):
    """A hook, pipeline or adapter is configured wrongly."""


class HookNotFound(ConfigurationError):
    """No hook is registered (by code or entry point) under the requested name."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(f"no hook named {name!r} is registered (known: {', '.join(known)})")


class HookConfigError(ConfigurationError):
    """A hook's configuration is invalid; the message names the hook and the key."""


class PipelineConfigError(ConfigurationError):
    """A pipeline definition (for example the flag value) is invalid."""


class RequestRefused(VectorHooksError):
    """The call was refused before reaching the backend, or its results were withheld."""


class InvalidTenantId(RequestRefused):
    """A tenant id outside the documented alphabet or length."""

    def __init__(self, tenant: object, reason: str) -> None:
        self.tenant = tenant
        self.reason = reason
        shown = repr(tenant)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"invalid tenant id {shown}: {reason}")


class InvalidFilter(RequestRefused):
    """A caller filter that is malformed in a way that could escape the tenant condition."""


class UnsafeArgument(RequestRefused):
    """An argument that would read or write across tenants (e.g. search by another row's id)."""


class TenantOwnershipError(UnsafeArgument):
    """A write named ids that belong to another tenant (or to none); nothing was written.

    `ids` lists every offending id in the order given; the owners are not named, so the error
    can be shown to the caller without telling it which tenant holds the rows.
    """

    #: How many ids the message lists before summarising the rest.
    SHOWN = 20

    def __init__(self, operation: str, tenant: str, ids: list[object]) -> None:
        self.operation = operation
        self.tenant = tenant
        self.ids = ids
        shown = ", ".join(repr(i) for i in ids[: self.SHOWN])
        if len(ids) > self.SHOWN:
            shown += f", ... ({len(ids)} in all)"
        super().__init__(
            f"{operation} refused for tenant {tenant!r}: ids [{shown}] belong to another "
            "tenant; nothing was written"
        )


class TenantIsolationError(RequestRefused):
    """Tenant isolation was not applied, or the backend answered a row of another tenant."""


class SecurityHookFailed(RequestRefused):
    """A security hook raised, so the search fails closed instead of returning unchecked rows."""

    def __init__(self, hook: str, phase: str, cause: BaseException) -> None:
        self.hook = hook
        self.phase = phase
        super().__init__(f"security hook {hook!r} failed in {phase}, search refused: {cause}")


class BackendError(VectorHooksError):
    """The vector database failed; the original exception is the `__cause__`."""


class BackendUnavailable(BackendError):
    """The backend cannot be reached or the client is closed."""


class BackendTimeout(BackendError):
    """The backend did not answer within the deadline."""


class BackendPermissionDenied(BackendError):
    """The backend refused the credentials or the operation."""


class BackendRequestError(BackendError):
    """The backend rejected the request (unknown collection, bad expression, schema mismatch)."""
