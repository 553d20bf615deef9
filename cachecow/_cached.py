"""Function results under the lease protocol: ``cache.cached(...)``.

A decorated function gets a cache of its own, a private subclass of the decorating cache's class
(``_FunctionCache`` at the end of ``_core.py`` and of ``_async.py``) that shares its client,
serializer, prefix, clock and counters. Its "model" is the function's label (``module.qualname``
or ``name=``), its lookup is the call's bound arguments, and its hooks call the function:
``fetch`` runs it, ``serialize``/``deserialize`` wrap the result in a :class:`Result` (so
``None`` and scalars are values, never tombstones), ``verify`` accepts any result. Everything
else (the lease and its token check at commit, single flight, the busy policy, ``fail_open``) is
the core's own: no flow and no script is written for functions. ``fn.many(calls)`` is the
core's ``get_many`` over the calls (its default ``fetch_many`` runs the function once per
missing call, in order).

A function whose first parameter is ``self`` or ``cls`` is wrapped in a descriptor
(:class:`MethodWrapper`) instead of a function, so that ``obj.method.many(...)`` knows ``obj``:
a bound method's attributes are its function's, which cannot know the instance.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from inspect import Parameter
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, TypeVar, overload

from .exceptions import ConfigurationError, InvalidLookup, NotFound
from .keys import Field, build_keys, encode_value, model_label

if TYPE_CHECKING:
    from ._options import Options
    from ._protocol import CacheCowBase
    from .serializers import Serializer

__all__ = ["Cached", "CachedMethod", "FunctionHooks", "Raised", "Result", "decorate"]

P = ParamSpec("P")
P2 = ParamSpec("P2")
R = TypeVar("R")
R2 = TypeVar("R2")
I2 = TypeVar("I2")
M2 = TypeVar("M2")
R_co = TypeVar("R_co", covariant=True)
I_co = TypeVar("I_co", covariant=True)
M_co = TypeVar("M_co", covariant=True)

_SELF_NAMES = ("self", "cls")


class CachedMethod(Protocol[P, R_co, I_co, M_co]):
    """A cached method read from its class: called with the instance first, and so is
    ``many``; ``invalidate`` takes the arguments without it (the instance is not part of the
    key)."""

    def __call__(self, instance: Any, /, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> I_co: ...

    def many(self, instance: Any, calls: Iterable[tuple[Any, ...]], /) -> M_co: ...


class Cached(Protocol[P, R_co, I_co, M_co]):
    """What ``cache.cached(...)`` makes of a function: the function, with its result cached,
    ``invalidate(*args, **kwargs)`` (``I_co`` is ``None``, or an awaitable for an
    :class:`~cachecow.AsyncCacheCow`), and ``many(calls)``, the results of many calls, each a
    tuple of positional arguments (``M_co`` is ``list[R]``, or an awaitable of it). On a
    method, ``self``/``cls`` is left out of all three."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> I_co: ...

    def many(self, calls: Iterable[tuple[Any, ...]], /) -> M_co: ...

    @overload
    def __get__(
        self: Cached[Concatenate[Any, P2], R2, I2, M2],
        instance: None,
        owner: type[Any] | None = None,
    ) -> CachedMethod[P2, R2, I2, M2]: ...

    @overload
    def __get__(
        self: Cached[Concatenate[Any, P2], R2, I2, M2],
        instance: object,
        owner: type[Any] | None = None,
    ) -> Cached[P2, R2, I2, M2]: ...

    def __get__(self, instance: Any, owner: type[Any] | None = None) -> Any: ...


class Result:
    """A function's result as its cache holds it: never ``None``, so never a tombstone."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


class Raised(Exception):
    """Carries a :class:`~cachecow.NotFound` that the function raised past the read (which
    would otherwise take it for "no such object" and cache a tombstone): exceptions are never
    cached. The decorator re-raises ``error`` itself."""

    def __init__(self, error: NotFound) -> None:
        super().__init__(error)
        self.error = error


class Call:
    """One call of a cached function: its arguments, and the keys of its result."""

    __slots__ = ("args", "keys", "kwargs", "label")

    def __init__(
        self, label: str, keys: tuple[str, str], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.label = label
        self.keys = keys
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        shown = [repr(a) for a in self.args] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{self.label}({', '.join(shown)})"


class FunctionHooks:
    """The hooks of a cached function's own cache (mixed into a CacheCow subclass)."""

    serializer: Serializer
    function: Callable[..., Any]

    def _bind_client(self, redis: Any) -> None:
        """Nothing to bind: :func:`share` gives it the parent's connection."""

    def get_keys(self, cls: Any, id_field: Field, id_val: Any) -> tuple[str, str]:
        keys: tuple[str, str] = id_val.keys  # built once per call, from the bound arguments
        return keys

    def serialize(self, obj: Any) -> bytes:
        return self.serializer.dumps(obj.value)

    def deserialize(self, cls: Any, data: bytes) -> Any:
        return Result(self.serializer.loads(data))

    def verify(self, cls: Any, id_field: Field, id_val: Any, obj: Any) -> bool:
        return isinstance(obj, Result)

    def run(self, call: Call) -> Result:
        """Call the function (a plain one)."""
        try:
            return Result(self.function(*call.args, **call.kwargs))
        except NotFound as exc:
            raise Raised(exc) from exc

    async def run_async(self, call: Call) -> Result:
        """Call the function (an ``async def``)."""
        try:
            return Result(await self.function(*call.args, **call.kwargs))
        except NotFound as exc:
            raise Raised(exc) from exc


def share(inner: Any, parent: CacheCowBase[Any], options: Options) -> None:
    """Make a function's cache share its parent's connection, counters and options."""
    inner.options = options
    inner.metrics = parent.metrics
    inner._io = parent._io  # type: ignore[attr-defined]
    inner._group_by_slot = parent._group_by_slot
    inner._near = parent._near  # its keys are under the same prefix: tracked alike
    if hasattr(parent, "_async_clock"):
        inner._async_clock = parent._async_clock


class Binder:
    """Turns a call's arguments into the keys of its result (``self``/``cls`` left out)."""

    def __init__(self, function: Callable[..., Any], label: str, prefix: str) -> None:
        signature = inspect.signature(function)
        params = list(signature.parameters.values())
        self.method = bool(params) and (
            params[0].name in _SELF_NAMES
            and params[0].kind in (Parameter.POSITIONAL_ONLY, Parameter.POSITIONAL_OR_KEYWORD)
        )
        if self.method:
            params = params[1:]
        self.signature = signature.replace(parameters=params)
        self.var_keyword = {p.name for p in params if p.kind is Parameter.VAR_KEYWORD}
        stars: dict[Any, str] = {Parameter.VAR_POSITIONAL: "*", Parameter.VAR_KEYWORD: "**"}
        names = [stars.get(p.kind, "") + p.name for p in params]
        self.field = ",".join(names) or "()"
        self.label = label
        self.prefix = prefix

    def call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Call:
        """A call of the function (a method's instance first in ``args``)."""
        key_args = args[1:] if self.method and args else args
        return Call(self.label, self.keys(key_args, kwargs), args, kwargs)

    def calls(self, calls: Iterable[tuple[Any, ...]], head: tuple[Any, ...] = ()) -> list[Call]:
        """The calls of ``fn.many(calls)``: each a tuple of positional arguments, after
        ``head`` (a method's instance)."""
        if isinstance(calls, (str, bytes)) or not isinstance(calls, Iterable):
            raise TypeError(
                f"{self.label}.many() takes an iterable of argument tuples, got {calls!r}"
            )
        batch = []
        for args in calls:
            if not isinstance(args, tuple):
                raise TypeError(
                    f"{self.label}.many() takes a tuple of positional arguments per call "
                    f"(many([(1,), (2,)]) for f(1) and f(2)), got {args!r}"
                )
            batch.append(self.call(head + args, {}))
        return batch

    def keys(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, str]:
        """The keys of the result of a call with these arguments (without ``self``)."""
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = [
            tuple(sorted(value.items())) if name in self.var_keyword else value
            for name, value in bound.arguments.items()
        ]
        try:
            return build_keys(self.prefix, self.label, self.field, tuple(values))
        except InvalidLookup:
            for name, value in zip(bound.arguments, values, strict=True):
                self._check(name, value)
            raise

    def _check(self, name: str, value: Any) -> None:
        try:
            encode_value((value,))  # as deep as inside the key's tuple of arguments
        except InvalidLookup as exc:
            reason = str(exc).split(":")[0].split(" (")[0]
            hint = ""
            if isinstance(value, AbstractSet):
                hint = " Pass a set as tuple(sorted(values))."
            elif isinstance(value, Mapping):
                hint = " Pass a dict as tuple(sorted(d.items()))."
            raise InvalidLookup(
                f"cannot cache a call of {self.label}(): argument {name!r}: {reason}. The "
                "arguments of a cached function are its key, typed and the same in every "
                "process: None, bool, int, float, str, bytes, Decimal, UUID, datetime, date, "
                "time, timedelta, enum members, IP addresses, ObjectId, and tuples or lists of "
                f"these.{hint}"
            ) from None


def is_async(function: Callable[..., Any]) -> bool:
    """Whether ``function`` (or the ``__call__`` of a callable object) is an ``async def``."""
    return inspect.iscoroutinefunction(function) or (
        not inspect.isfunction(function)
        and inspect.iscoroutinefunction(getattr(function, "__call__", None))  # noqa: B004
    )


def decorate(
    parent: CacheCowBase[Any],
    cache_class: Any,
    ttl: float | None,
    name: str | None,
    serializer: Serializer | None,
) -> Callable[[Callable[..., Any]], Any]:
    """The decorator ``parent.cached(ttl, name=name, serializer=serializer)`` returns;
    ``cache_class`` is the parent's ``_FunctionCache`` (its ``asynchronous`` says which
    functions it takes)."""
    if callable(ttl):
        raise ConfigurationError(
            "cached() takes arguments: write @cache.cached(), not @cache.cached"
        )
    options = parent.options if ttl is None else dataclasses.replace(parent.options, ttl=ttl)
    if name is not None:
        model_label(name)  # a non-empty string
        if not isinstance(name, str):
            raise ConfigurationError(f"name must be a string, got {name!r}")

    def decorator(function: Callable[..., Any]) -> Any:
        _check_function(function, cache_class.asynchronous, type(parent).__name__)
        label = _label_of(function) if name is None else name
        binder = Binder(function, label, parent.prefix)
        inner = cache_class(parent, function, options, serializer)
        wrap = _async_wrapper if cache_class.asynchronous else _sync_wrapper
        return wrap(function, inner, binder, label)

    return decorator


def _check_function(function: Any, asynchronous: bool, cache_name: str) -> None:
    """Refuse what ``cached()`` cannot decorate, at decoration time."""
    if isinstance(function, (classmethod, staticmethod)):
        raise ConfigurationError(
            "put @cache.cached(...) below @classmethod or @staticmethod, next to the function"
        )
    if not callable(function):
        raise ConfigurationError(f"cached() decorates functions, got {function!r}")
    if is_async(function) != asynchronous:
        raise ConfigurationError(
            f"{cache_name}.cached() takes "
            + (
                "async def functions: use CacheCow for plain ones"
                if asynchronous
                else "plain functions: use AsyncCacheCow for async def ones"
            )
            + f", got {function!r}"
        )


def _label_of(function: Callable[..., Any]) -> str:
    """A function's label in keys: ``module.qualname`` (a lambda has none to rely on)."""
    qualname = getattr(function, "__qualname__", None)
    if not qualname or "<lambda>" in qualname:
        raise ConfigurationError(
            f"{function!r} has no unique qualified name: pass cached(name=...)"
        )
    return f"{function.__module__}.{qualname}"


def _sync_wrapper(function: Callable[..., Any], inner: Any, binder: Binder, label: str) -> Any:
    field = binder.field

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        call = binder.call(args, kwargs)
        try:
            result: Result = inner.get(label, field, call)
        except Raised as raised:
            raise raised.error from None
        return result.value

    def invalidate(*args: Any, **kwargs: Any) -> None:
        inner.invalidate(label, field, Call(label, binder.keys(args, kwargs), args, kwargs))

    def read_many(calls: Iterable[tuple[Any, ...]], head: tuple[Any, ...]) -> list[Any]:
        batch = binder.calls(calls, head)
        try:
            results = inner.get_many(label, field, batch)
        except Raised as raised:
            raise raised.error from None
        return results_of(inner, binder, batch, results)

    if binder.method:
        return MethodWrapper(function, wrapper, invalidate, read_many, inner, binder)

    def many(calls: Iterable[tuple[Any, ...]], /) -> list[Any]:
        return read_many(calls, ())

    return _function(wrapper, invalidate, many, inner)


def _async_wrapper(function: Callable[..., Any], inner: Any, binder: Binder, label: str) -> Any:
    field = binder.field

    @functools.wraps(function)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        call = binder.call(args, kwargs)
        try:
            result: Result = await inner.get(label, field, call)
        except Raised as raised:
            raise raised.error from None
        return result.value

    async def invalidate(*args: Any, **kwargs: Any) -> None:
        await inner.invalidate(label, field, Call(label, binder.keys(args, kwargs), args, kwargs))

    async def read_many(calls: Iterable[tuple[Any, ...]], head: tuple[Any, ...]) -> list[Any]:
        batch = binder.calls(calls, head)
        try:
            results = await inner.get_many(label, field, batch)
        except Raised as raised:
            raise raised.error from None
        return results_of(inner, binder, batch, results)

    if binder.method:
        return AsyncMethodWrapper(function, wrapper, invalidate, read_many, inner, binder)

    async def many(calls: Iterable[tuple[Any, ...]], /) -> list[Any]:
        return await read_many(calls, ())

    return _function(wrapper, invalidate, many, inner)


def _function(wrapper: Any, invalidate: Any, many: Any, inner: Any) -> Any:
    """The wrapper of a function (not a method): the function itself, with its attributes."""
    wrapper.invalidate = invalidate
    wrapper.many = many
    wrapper.cache = inner
    return wrapper


def results_of(inner: Any, binder: Binder, batch: list[Call], results: list[Any]) -> list[Any]:
    """The results of a batch's calls, from ``get_many``'s objects."""
    out = []
    for call, result in zip(batch, results, strict=True):
        if result is None:  # a "not found" under the call's key, as a single call raises it
            raise inner.not_found(binder.label, binder.field, call)
        out.append(result.value)
    return out


class MethodWrapper:
    """A cached method (its first parameter ``self`` or ``cls``): a descriptor, so that
    ``obj.method`` is a :class:`BoundMethod` whose ``many`` knows ``obj``. Read from its class
    it is itself: called with the instance first, and so is ``many``."""

    def __init__(
        self,
        function: Callable[..., Any],
        call: Callable[..., Any],
        invalidate: Callable[..., Any],
        many: Callable[..., Any],
        inner: Any,
        binder: Binder,
    ) -> None:
        functools.update_wrapper(self, function)
        self._call = call
        self._many = many
        self._binder = binder
        self.invalidate = invalidate
        self.cache = inner

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)

    def many(self, instance: Any, calls: Iterable[tuple[Any, ...]], /) -> Any:
        return self._many(calls, (instance,))

    def __get__(self, instance: Any, owner: type[Any] | None = None) -> Any:
        return self if instance is None else BoundMethod(self, instance)

    def __repr__(self) -> str:
        return f"<cached method {self._binder.label}>"


class AsyncMethodWrapper(MethodWrapper):
    """A cached ``async def`` method: :class:`MethodWrapper` whose calls are coroutines
    (``async def __call__``, which frameworks look for)."""

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call(*args, **kwargs)

    async def many(self, instance: Any, calls: Iterable[tuple[Any, ...]], /) -> Any:
        return await self._many(calls, (instance,))

    def __get__(self, instance: Any, owner: type[Any] | None = None) -> Any:
        return self if instance is None else AsyncBoundMethod(self, instance)


class BoundMethod:
    """A cached method read from an instance: the instance goes first in every call and in
    every call of ``many``; ``invalidate`` is the method's own. Like a bound method, its
    ``__self__`` is the instance and its ``__func__`` the :class:`MethodWrapper`."""

    __slots__ = ("__func__", "__self__")

    def __init__(self, method: MethodWrapper, instance: Any) -> None:
        self.__func__ = method
        self.__self__ = instance

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__func__._call(self.__self__, *args, **kwargs)

    def many(self, calls: Iterable[tuple[Any, ...]], /) -> Any:
        return self.__func__._many(calls, (self.__self__,))

    @property
    def invalidate(self) -> Callable[..., Any]:
        return self.__func__.invalidate

    @property
    def __signature__(self) -> inspect.Signature:
        """The method's signature without ``self``, as for a bound method."""
        return self.__func__._binder.signature

    def __getattr__(self, name: str) -> Any:  # __name__, __wrapped__, cache...
        # Not self.__func__: unset (a copy being built), it would come back here.
        return getattr(object.__getattribute__(self, "__func__"), name)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, BoundMethod)
            and self.__func__ is other.__func__
            and self.__self__ is other.__self__
        )

    def __hash__(self) -> int:
        return hash((id(self.__func__), id(self.__self__)))

    def __repr__(self) -> str:
        return f"<bound cached method {self.__func__._binder.label} of {self.__self__!r}>"


class AsyncBoundMethod(BoundMethod):
    """:class:`BoundMethod` of an ``async def`` method."""

    __slots__ = ()

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return await self.__func__._call(self.__self__, *args, **kwargs)

    async def many(self, calls: Iterable[tuple[Any, ...]], /) -> Any:
        return await self.__func__._many(calls, (self.__self__,))
