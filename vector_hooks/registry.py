"""Find hooks by name: registered in code, shipped built in, or discovered from entry points.

Lookup order: hooks registered with `register()` (the service's own code wins, it may even
replace a built-in), then the built-ins, then the entry-point group ``vector_hooks.hooks`` of
installed packages. An entry point cannot shadow a built-in name (a third-party package must
not be able to swap the tenant filter for something else by being installed); such entry
points are ignored with a warning.

What may be registered:

- a hook class: built with ``cls.from_config(config)`` if it has one, else ``cls(**config)``;
- a factory function ``(config: Mapping) -> Hook``;
- a hook instance: shared by every pipeline that uses it, takes no config, and is initialised
  on first use and closed when the last pipeline using it closes.

Example::

    from vector_hooks import register
    register("boost-pinned", BoostPinned)
"""

from __future__ import annotations

import importlib.metadata
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from vector_hooks.errors import ConfigurationError, HookConfigError, HookNotFound
from vector_hooks.hooks import Hook, HookKind
from vector_hooks.request import Hits, SearchRequest

__all__ = [
    "ENTRY_POINT_GROUP",
    "HookFactory",
    "HookRegistry",
    "create_hook",
    "default_registry",
    "register",
]

logger = logging.getLogger("vector_hooks.registry")

#: The entry-point group installed packages use to contribute hooks.
ENTRY_POINT_GROUP = "vector_hooks.hooks"

#: Builds a configured hook from its config mapping.
HookFactory = Callable[[Mapping[str, Any]], Hook]


def _builtin_objects() -> dict[str, object]:
    # Imported lazily: the built-ins import the hook contract, which must not import them back.
    from vector_hooks.builtins import BUILTIN_HOOKS

    return dict(BUILTIN_HOOKS)


class _SharedHook:
    """A registered instance, reference-counted across the pipelines that use it."""

    def __init__(self, hook: Hook) -> None:
        self.hook = hook
        self._users = 0
        self._lock = threading.Lock()

    def handle(self) -> _SharedHandle:
        return _SharedHandle(self)

    def acquire(self) -> None:
        with self._lock:
            if self._users == 0:
                init = getattr(self.hook, "init", None)
                if init is not None:
                    init()
            self._users += 1

    def release(self) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                close = getattr(self.hook, "close", None)
                if close is not None:
                    close()


class _SharedHandle:
    """One pipeline's view of a shared instance: init/close count users, the rest delegates."""

    def __init__(self, shared: _SharedHook) -> None:
        self._shared = shared
        self._hook = shared.hook
        self._acquired = False

    @property
    def name(self) -> str:
        return self._hook.name

    @property
    def kind(self) -> HookKind:
        return self._hook.kind

    def init(self) -> None:
        if not self._acquired:
            self._shared.acquire()
            self._acquired = True

    def close(self) -> None:
        if self._acquired:
            self._acquired = False
            self._shared.release()

    def before_search(self, request: SearchRequest) -> SearchRequest | None:
        return self._hook.before_search(request)

    def after_search(self, request: SearchRequest, hits: Hits) -> Hits | None:
        return self._hook.after_search(request, hits)

    def on_error(self, request: SearchRequest, error: BaseException) -> None:
        self._hook.on_error(request, error)


def _as_factory(name: str, obj: object) -> HookFactory:
    """Turn a registered class, factory or instance into a factory; refuse anything else."""
    if isinstance(obj, type):
        cls = obj
        from_config = getattr(cls, "from_config", None)

        def build_from_class(config: Mapping[str, Any]) -> Hook:
            if callable(from_config):
                return _checked(name, from_config(config))
            try:
                return _checked(name, cls(**config))
            except TypeError as exc:
                raise HookConfigError(f"hook {name!r}: bad config {dict(config)!r}: {exc}") from exc

        return build_from_class
    if isinstance(obj, Hook):
        shared = _SharedHook(obj)

        def use_instance(config: Mapping[str, Any]) -> Hook:
            if config:
                raise HookConfigError(
                    f"hook {name!r} is a registered instance and takes no config "
                    f"(got keys {sorted(config)})"
                )
            return shared.handle()

        return use_instance
    if callable(obj):
        factory = obj

        def build_from_factory(config: Mapping[str, Any]) -> Hook:
            return _checked(name, factory(config))

        return build_from_factory
    raise ConfigurationError(
        f"cannot register {name!r}: expected a hook class, factory or instance, "
        f"got {type(obj).__name__}"
    )


def _checked(name: str, hook: object) -> Hook:
    if not isinstance(hook, Hook) or not isinstance(hook.kind, HookKind):
        raise ConfigurationError(
            f"hook {name!r} built {type(hook).__name__}, which does not implement the Hook "
            "contract (name, kind: HookKind, before_search, after_search, on_error)"
        )
    return hook


class HookRegistry:
    """Name -> hook factory, with built-ins and entry points loaded on first lookup."""

    def __init__(self, *, entry_point_group: str | None = ENTRY_POINT_GROUP) -> None:
        self._group = entry_point_group
        self._lock = threading.Lock()
        self._registered: dict[str, HookFactory] = {}
        self._builtins: dict[str, HookFactory] | None = None
        self._builtin_objects: dict[str, object] = {}
        self._entry_points: dict[str, importlib.metadata.EntryPoint] | None = None
        self._loaded_entry_points: dict[str, HookFactory] = {}

    def register(self, name: str, hook: object) -> None:
        """Register a hook class, factory or instance under `name` (replaces any previous)."""
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"hook name must be a non-empty string, not {name!r}")
        factory = _as_factory(name, hook)
        with self._lock:
            self._registered[name] = factory

    def unregister(self, name: str) -> None:
        """Forget a hook registered in code (built-ins and entry points stay)."""
        with self._lock:
            self._registered.pop(name, None)

    def names(self) -> list[str]:
        """Every name a lookup can resolve."""
        builtins, entry_points = self._load()
        return sorted(set(self._registered) | set(builtins) | set(entry_points))

    def factory(self, name: str) -> HookFactory:
        """The factory for `name`; raises `HookNotFound`."""
        builtins, entry_points = self._load()
        with self._lock:
            if name in self._registered:
                return self._registered[name]
            if name in builtins:
                return builtins[name]
            if name in self._loaded_entry_points:
                return self._loaded_entry_points[name]
            entry_point = entry_points.get(name)
        if entry_point is None:
            raise HookNotFound(name, self.names())
        try:
            obj = entry_point.load()
        except Exception as exc:
            raise ConfigurationError(
                f"entry point {name!r} ({entry_point.value}) of group {self._group!r} "
                f"failed to load: {exc}"
            ) from exc
        factory = _as_factory(name, obj)
        with self._lock:
            self._loaded_entry_points[name] = factory
        return factory

    def create(self, name: str, config: Mapping[str, Any] | None = None) -> Hook:
        """Build a configured hook; raises `HookNotFound` or `HookConfigError`."""
        return self.factory(name)(config or {})

    def _load(self) -> tuple[dict[str, HookFactory], dict[str, importlib.metadata.EntryPoint]]:
        """(built-in factories, entry points), discovered on first use."""
        with self._lock:
            if self._builtins is None:
                self._builtin_objects = _builtin_objects()
                self._builtins = {
                    name: _as_factory(name, obj) for name, obj in self._builtin_objects.items()
                }
            if self._entry_points is None:
                self._entry_points = self._discover()
            return self._builtins, self._entry_points

    def _discover(self) -> dict[str, importlib.metadata.EntryPoint]:
        if self._group is None:
            return {}
        found: dict[str, importlib.metadata.EntryPoint] = {}
        for entry_point in importlib.metadata.entry_points(group=self._group):
            builtin = self._builtin_objects.get(entry_point.name)
            if builtin is not None:
                expected = f"{builtin.__module__}:{getattr(builtin, '__qualname__', '')}"
                if entry_point.value.replace(" ", "") != expected:
                    logger.warning(
                        "ignoring entry point %r = %r of group %r: it would shadow the "
                        "built-in hook %s",
                        entry_point.name,
                        entry_point.value,
                        self._group,
                        expected,
                    )
                continue  # the built-in itself, declared for discoverability
            found[entry_point.name] = entry_point
        return found


#: The process-wide registry `register()` and flag-selected pipelines use by default.
default_registry = HookRegistry()


def register(name: str, hook: object) -> None:
    """Register a hook in the default registry; see the module docstring."""
    default_registry.register(name, hook)


def create_hook(name: str, config: Mapping[str, Any] | None = None) -> Hook:
    """Build a configured hook from the default registry."""
    return default_registry.create(name, config)
