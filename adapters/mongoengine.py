"""MongoEngine adapter: the original MongoCacheCow, done right.

::

    import cachecow
    from cachecow.adapters.mongoengine import MongoCache, CachedQuerySet, set_default_cache

    cache = MongoCache(cachecow.connect())
    cache.watch(BlogPost)                     # invalidate on save and delete (needs blinker)

    post = cache.get(BlogPost, "title", "First Title")
    post = cache.get(BlogPost, "id", post.id)
    posts = cache.get_many(BlogPost, "id", ids)           # one $in query for the misses

**Lookups.** Only unique lookups are served: the primary key (``id``, or the field declared
``primary_key=True``), a ``unique=True`` field, and a ``unique_with`` compound key (a tuple of
field names, in any order). Anything else raises :class:`~cachecow.InvalidLookup` listing the
document's valid lookups. Pass ids as ``ObjectId``: values are typed (``"5f..."`` is not
``ObjectId("5f...")``).

**Reads.** ``fetch`` reads the primary with a plain queryset (never a cached one). A document
comes back from the cache as one loaded from the database: rebuilt with ``_from_son`` from its
stored form, which round-trips exactly (``ObjectId``, datetimes at MongoDB's millisecond
precision, ``Decimal128``, embedded documents, lists, dicts, binary, references kept as ids and
dereferenced on access as usual, ``None``). A stored form the class no longer accepts (a field
removed) is a miss, not an error.

**Invalidation.** :meth:`MongoCache.watch` connects ``pre_save``/``post_save`` and
``pre_delete``/``post_delete`` (MongoEngine's signals need ``blinker``): the unique fields as the
database holds them before the write (one read) and as the document holds them after are
invalidated right after the write (MongoDB has no transaction to wait for).
:class:`CachedQuerySet` (``meta = {"queryset_class": CachedQuerySet}``) serves ``objects.get()``
of one unique lookup from the cache, and its ``update()`` (and so ``update_one()`` and a
document's ``update()``), ``modify()``, ``delete()`` and ``insert()`` invalidate every document
they touch. Writes through the collection itself (pymongo) are not seen.

**Holes reported.** A document class read into the cache that this cache does not watch is
logged once (WARNING, logger ``cachecow``): its saves and deletes would leave cached documents
stale. So is, at :meth:`~MongoCache.watch`, a class whose queryset is not a
:class:`CachedQuerySet`: its ``objects(...).update()`` and ``delete()`` write unseen.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

try:
    from bson import json_util
    from bson.json_util import JSONMode, JSONOptions
    from mongoengine import Document, QuerySet, signals
    from mongoengine import fields as me_fields
    from mongoengine.queryset.visitor import Q
    from pymongo import ReadPreference
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "cachecow.adapters.mongoengine needs MongoEngine and blinker: "
        "pip install 'cachecow-orm[mongoengine]'"
    ) from exc

from cachecow import CacheCow, CacheOptions, ConfigurationError, NotFound
from cachecow.keys import Field, normalize_lookup

from ._base import (
    DefaultCache,
    ModelCache,
    ModelInfo,
    filter_in,
    has_null,
    keys_of,
    kwargs_of,
    to_python,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing.Unpack from Python 3.11 on

__all__ = ["CachedQuerySet", "MongoCache", "default_cache", "set_default_cache"]


# Relaxed Extended JSON: plain numbers stay plain, every BSON type keeps its own tag.
_JSON = JSONOptions(json_mode=JSONMode.RELAXED, tz_aware=False)


@dataclass(kw_only=True)
class _Model(ModelInfo):
    """A document class as the adapter sees it: its unique lookups and their fields."""

    place: tuple[str, str]  # where it was first seen (see _place)
    db_keys: dict[str, str]  # each lookup attribute's field in the stored document

    @classmethod
    def of(cls, model: Any) -> _Model:
        if not (isinstance(model, type) and issubclass(model, Document)):
            raise ConfigurationError(f"{model!r} is not a MongoEngine Document class")
        doc: Any = model
        if doc._meta.get("abstract"):
            raise ConfigurationError(f"{doc.__qualname__} is abstract")
        if doc._meta.get("allow_inheritance"):
            raise ConfigurationError(
                f"{doc.__qualname__} allows inheritance, which cachecow does not cache yet"
            )
        pk = doc._meta["id_field"]
        lookups: list[Field] = [pk]
        for name, field in doc._fields.items():
            if not getattr(field, "unique", False) or name == pk:
                continue
            unique_with = field.unique_with or ()
            if isinstance(unique_with, str):
                unique_with = (unique_with,)
            names = (name, *unique_with)
            if any(isinstance(doc._fields[n], _NOT_LOOKUPS) for n in names):
                continue  # a reference or an embedded document: no stable value to key by
            lookup, _ = normalize_lookup(names, (None,) * len(names))
            if lookup not in lookups:
                lookups.append(lookup)
        keys = dict.fromkeys(k for lookup in lookups for k in keys_of(lookup))
        return cls(
            cls=doc,
            label=doc.__qualname__,
            lookups=lookups,
            place=_place(doc),
            db_keys={k: doc._fields[k].db_field for k in keys},
        )

    def values(self, doc: Any) -> dict[str, Any]:
        """A document's lookup attributes, as :meth:`row_lookups` takes them."""
        return {k: getattr(doc, k) for k in self.lookup_keys}

    def stored(self, query: dict[str, Any]) -> list[dict[str, Any]]:
        """The unique fields of the documents matching a raw ``query``, as stored now."""
        projection = dict.fromkeys(self.db_keys.values(), 1)
        collection = self.cls._get_collection().with_options(read_preference=ReadPreference.PRIMARY)
        out = []
        for raw in collection.find(query, projection):
            out.append({k: raw.get(db) for k, db in self.db_keys.items()})
        return out


_NOT_LOOKUPS = (
    me_fields.ReferenceField,
    me_fields.LazyReferenceField,
    me_fields.GenericReferenceField,
    me_fields.GenericLazyReferenceField,
    me_fields.EmbeddedDocumentField,
    me_fields.GenericEmbeddedDocumentField,
    me_fields.ListField,
    me_fields.DictField,
)


logger = logging.getLogger("cachecow")


def _place(cls: Any) -> tuple[str, str]:
    """Where a document class reads and writes right now: its database alias and collection
    (switch_db and switch_collection change them)."""
    return cls._meta.get("db_alias", "default"), cls._get_collection_name()


class MongoCache(ModelCache[_Model], CacheCow):
    """A :class:`~cachecow.CacheCow` of MongoEngine documents (see the module docstring).

    :param redis: a redis-py client.
    :param options: the options of :class:`~cachecow.CacheCow`.
    """

    def __init__(self, redis: Any, **options: Unpack[CacheOptions]) -> None:
        super().__init__(redis, **options)
        self._models: dict[Any, _Model] = {}
        self._receivers: list[tuple[Any, Any, Any]] = []
        self._watched: set[Any] = set()
        self._unwatched_warned: set[Any] = set()
        self._stash = f"_cachecow_stored_{id(self)}"  # one per cache: two may watch a class

    def inspect_model(self, cls: Any) -> _Model:
        return _Model.of(cls)

    # -- hooks ----------------------------------------------------------------------------------

    def check_lookup(self, cls: Any, id_field: Field) -> None:
        info = self.model_info(cls)
        if _place(cls) != info.place:
            raise ConfigurationError(
                f"{cls.__qualname__} is switched to {_place(cls)} (switch_db/switch_collection): "
                f"cachecow caches its documents in {info.place} only"
            )
        super().check_lookup(cls, id_field)

    def coerce_value(self, info: _Model, name: str, value: Any) -> Any:
        return to_python(info.cls._fields.__getitem__, name, value)

    def _plain_queryset(self, cls: Any) -> Any:
        # Never the document's own queryset class: a CachedQuerySet would ask the cache back.
        return QuerySet(cls, cls._get_collection()).read_preference(ReadPreference.PRIMARY)

    def fetch(self, cls: Any, id_field: Field, id_val: Any) -> Any:
        self._check_watched(cls)
        try:
            return self._plain_queryset(cls).get(**kwargs_of(id_field, id_val))
        except cls.DoesNotExist:
            raise NotFound(cls, id_field, id_val) from None

    def select_many(self, cls: Any, id_field: Field, id_vals: Sequence[Any]) -> Any:
        self._check_watched(cls)
        return filter_in(self._plain_queryset(cls), Q, id_field, id_vals)

    def not_found(self, cls: Any, id_field: Field, id_val: Any) -> BaseException:
        exc: BaseException = cls.DoesNotExist(
            f"{cls.__name__} matching {kwargs_of(id_field, id_val)} does not exist"
        )
        return exc

    def serialize(self, obj: Any) -> bytes:
        return json_util.dumps(obj.to_mongo(), json_options=_JSON).encode()

    def deserialize(self, cls: Any, data: bytes) -> Any:
        return cls._from_son(json_util.loads(data, json_options=_JSON))

    # -- invalidation ---------------------------------------------------------------------------

    def watch(self, cls: Any) -> None:
        """Invalidate ``cls``'s lookups right after every save and delete of a document."""
        self.model_info(cls)
        for signal, receiver in [
            (signals.pre_save, self._before_write),
            (signals.post_save, self._after_write),
            (signals.pre_delete, self._before_write),
            (signals.post_delete, self._after_write),
        ]:
            signal.connect(receiver, sender=cls, weak=False)
            self._receivers.append((signal, cls, receiver))
        self._watched.add(cls)
        queryset = cls._meta.get("queryset_class", QuerySet)
        if not issubclass(queryset, CachedQuerySet):
            logger.warning(
                "%s's queryset is %s, not a CachedQuerySet: its objects(...).update(), "
                "modify(), delete() and insert() write without invalidating, and leave cached "
                "documents stale. Give the class meta = {'queryset_class': CachedQuerySet}.",
                cls.__qualname__,
                queryset.__qualname__,
            )

    def unwatch(self) -> None:
        """Disconnect every signal receiver :meth:`watch` connected."""
        for signal, cls, receiver in self._receivers:
            signal.disconnect(receiver, sender=cls)
        self._receivers.clear()
        self._watched.clear()

    def _check_watched(self, cls: Any) -> None:
        """Warn, once per class, of documents read into the cache that this cache does not
        watch: their saves and deletes would invalidate nothing."""
        if cls in self._watched or cls in self._unwatched_warned:
            return
        self._unwatched_warned.add(cls)
        logger.warning(
            "%s is read into the cache, which does not watch it: its saves and deletes "
            "invalidate nothing, so cached documents go stale. Call cache.watch(%s), or "
            "invalidate by hand after each write.",
            cls.__qualname__,
            cls.__qualname__,
        )

    def _before_write(self, sender: Any, document: Any, **kwargs: Any) -> None:
        # What the database holds now: the values this document's entries are cached under,
        # whatever the in-memory document remembers.
        pk = document.pk
        info = self.model_info(sender)
        document.__dict__[self._stash] = info.stored({"_id": pk}) if pk is not None else []

    def _after_write(self, sender: Any, document: Any, **kwargs: Any) -> None:
        info = self.model_info(sender)
        stored = document.__dict__.pop(self._stash, [])
        lookups = info.row_lookups(info.values(document))
        for row in stored:
            lookups += info.row_lookups(row)
        self.invalidate_lookups(list(dict.fromkeys(lookups)))


# -- the default cache, for CachedQuerySet ------------------------------------------------------


def _unset() -> MongoCache:
    raise ConfigurationError(
        "no default cachecow cache: call cachecow.adapters.mongoengine.set_default_cache()"
    )


_default: DefaultCache[MongoCache] = DefaultCache(_unset)


def default_cache() -> MongoCache:
    """The cache :class:`CachedQuerySet` uses (set with :func:`set_default_cache`)."""
    return _default.get()


def set_default_cache(cache: MongoCache | None, *, watch: Iterable[type] = ()) -> None:
    """Make ``cache`` the one :class:`CachedQuerySet` uses, and watch ``watch`` with it."""
    _default.set(cache)
    if cache is not None:
        for cls in watch:
            cache.watch(cls)


class CachedQuerySet(QuerySet):  # type: ignore[misc]
    """A queryset whose ``get()`` of one unique lookup comes from the cache, and whose
    ``update()``, ``modify()``, ``delete()`` and ``insert()`` invalidate every document they
    touch. Use it with ``meta = {"queryset_class": CachedQuerySet}``."""

    def _plain(self) -> bool:
        """Nothing narrows, reshapes or redirects this queryset: a get() of it is a lookup."""
        return (
            not self._query_obj
            and not self._mongo_query
            and not self._loaded_fields
            and not self._ordering
            and self._read_preference is None
            and not self._none
            and not self._as_pymongo
            and not self._scalar
            and self._skip is None
            and self._limit is None
            and not self._empty
            and self._where_clause is None
            and self._search_text is None
            and self._collation is None
            and self._collection_obj is self._document._get_collection()
        )

    def get(self, *q_objs: Any, **query: Any) -> Any:
        if not q_objs and query and self._plain():
            cache = default_cache()
            info = cache.model_info(self._document)
            if "pk" in query:
                query[self._document._meta["id_field"]] = query.pop("pk")
            field, value = normalize_lookup(tuple(query), tuple(query.values()))
            if field in info.lookups and not has_null(value):
                return cache.get(self._document, field, value)
        return super().get(*q_objs, **query)

    def _invalidate(self, rows: list[dict[str, Any]]) -> None:
        cache = default_cache()
        info = cache.model_info(self._document)
        lookups = [lk for row in rows for lk in info.row_lookups(row)]
        if lookups:
            cache.invalidate_lookups(list(dict.fromkeys(lookups)))

    def _stored_matching(self) -> list[dict[str, Any]]:
        info = default_cache().model_info(self._document)
        return info.stored(self._query)

    def _stored_ids(self, ids: list[Any]) -> list[dict[str, Any]]:
        info = default_cache().model_info(self._document)
        return info.stored({"_id": {"$in": ids}}) if ids else []

    def update(self, *args: Any, **kwargs: Any) -> Any:
        before = self._stored_matching()
        wants_full = kwargs.pop("full_result", False)
        result = super().update(*args, full_result=True, **kwargs)
        pk = self._document._meta["id_field"]
        ids = [row[pk] for row in before]
        upserted = getattr(result, "upserted_id", None)
        if upserted is not None:
            ids.append(upserted)  # an upsert: a new document, whatever the filter says
        after = self._stored_ids(ids) + self._stored_matching()
        self._invalidate(before + after)
        if wants_full:
            return result
        raw = getattr(result, "raw_result", None)
        return raw["n"] if raw else None

    def modify(self, *args: Any, **kwargs: Any) -> Any:
        before = self._stored_matching()
        if kwargs.get("upsert") and not kwargs.get("new") and not before:
            # An upsert that inserts returns None under new=False, and the new document may
            # no longer match the filter (the update can change the filter's own field): ask
            # for the new document to learn its lookups, and answer None as asked.
            created = super().modify(*args, **{**kwargs, "new": True})
            if created is not None:
                info = default_cache().model_info(self._document)
                self._invalidate([info.values(created)])
            return None
        result = super().modify(*args, **kwargs)
        info = default_cache().model_info(self._document)
        pk = self._document._meta["id_field"]
        # The filter again afterwards: an upsert's new document (new=False returns None).
        after = self._stored_ids([row[pk] for row in before]) + self._stored_matching()
        if result is not None:
            after.append(info.values(result))
        self._invalidate(before + after)
        return result

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        before = self._stored_matching()
        result = super().delete(*args, **kwargs)
        self._invalidate(before)
        return result

    def insert(self, doc_or_docs: Any, *args: Any, **kwargs: Any) -> Any:
        result = super().insert(doc_or_docs, *args, **kwargs)
        given = doc_or_docs if isinstance(doc_or_docs, list) else [doc_or_docs]
        returned = result if isinstance(result, list) else [result]
        info = default_cache().model_info(self._document)
        pk = self._document._meta["id_field"]
        rows = []
        for doc, back in zip(given, returned, strict=False):
            row = info.values(doc)
            if row.get(pk) is None:  # load_bulk=False returns the new ids, not documents
                row[pk] = back.pk if isinstance(back, Document) else back
            rows.append(row)
        self._invalidate(rows)
        return result
