"""The MongoEngine adapter: the contract suite, every stored type's round trip, and invalidation
through signals and the CachedQuerySet.

MongoDB: mongomock by default (no MongoDB server can be installed on this machine: it is an
in-process fake of the server, so the same tests run against a real MongoDB when MONGODB_URL is
set); Redis: a real private redis-server, as everywhere.
"""

from __future__ import annotations

import datetime as dt
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

pytest.importorskip("mongoengine", reason="the mongoengine extra is not installed")

import mongoengine as me
from bson import Decimal128, ObjectId

import cachecow
from cachecow import InvalidLookup
from cachecow.adapters.mongoengine import CachedQuerySet, MongoCache, set_default_cache
from cachecow.testing.contract import CacheCowContract
from tests.support.lookups import BAD_VALUES, calls

MONGODB_URL = os.environ.get("MONGODB_URL")


@pytest.fixture(scope="module", autouse=True)
def mongo() -> Iterator[None]:
    name = f"cachecow_test_{uuid.uuid4().hex[:8]}"
    if MONGODB_URL:
        me.connect(name, host=MONGODB_URL, uuidRepresentation="standard")
    else:
        import mongomock

        me.connect(
            name,
            host="mongodb://localhost",
            mongo_client_class=mongomock.MongoClient,
            uuidRepresentation="standard",
        )
    try:
        yield
    finally:
        me.connection.get_connection().drop_database(name)
        me.disconnect()


class Item(me.Document):
    """The contract suite's document."""

    id = me.IntField(primary_key=True)
    payload = me.StringField()
    meta = {"collection": "cc_items"}  # noqa: RUF012 - MongoEngine's declaration style


class Author(me.Document):
    name = me.StringField()
    meta = {"collection": "cc_authors"}  # noqa: RUF012


class Tag(me.EmbeddedDocument):
    label = me.StringField()
    weight = me.FloatField()


class Post(me.Document):
    title = me.StringField(unique=True)
    slug = me.StringField(unique=True, unique_with="site")
    site = me.StringField()
    likes = me.IntField(default=0)
    meta = {"collection": "cc_posts", "queryset_class": CachedQuerySet}  # noqa: RUF012


class Everything(me.Document):
    oid = me.ObjectIdField()
    when = me.DateTimeField()
    price = me.Decimal128Field()
    tag = me.EmbeddedDocumentField(Tag)
    tags = me.ListField(me.EmbeddedDocumentField(Tag))
    numbers = me.ListField(me.IntField())
    extra = me.DictField()
    author = me.ReferenceField(Author)
    blob = me.BinaryField()
    flag = me.BooleanField()
    ratio = me.FloatField()
    text = me.StringField()
    meta = {"collection": "cc_everything"}  # noqa: RUF012


@pytest.fixture(autouse=True)
def empty_collections() -> None:
    for cls in (Item, Author, Post, Everything):
        cls.drop_collection()


@pytest.fixture
def cache(redis_client: redis.Redis) -> Iterator[MongoCache]:
    cache = MongoCache(redis_client)
    set_default_cache(cache, watch=[Post])
    yield cache
    set_default_cache(None)


def cached(cache: MongoCache, cls: Any, field: Any, value: Any) -> Any:
    raw = cache.redis.get(cache.get_keys(cls, field, value)[0])
    if raw is None or raw == cachecow.TOMBSTONE:
        return None
    return cache.deserialize(cls, raw)


class TestMongoEngineContract(CacheCowContract):
    model = Item
    field = "id"

    def make_cache(self, redis: redis.Redis, **options: Any) -> MongoCache:
        return MongoCache(redis, **options)

    def write(self, key: int, payload: str) -> None:
        Item(id=key, payload=payload).save()

    def delete(self, key: int) -> None:
        Item.objects(id=key).delete()

    def payload_of(self, obj: Any) -> str:
        payload: str = obj.payload
        return payload


# -- stored types round-trip exactly, one test each -----------------------------------------------

AUTHOR = ObjectId()
VALUES: dict[str, Any] = {
    "oid": ObjectId(),
    "when": dt.datetime(2024, 5, 1, 12, 30, 45, 123000),  # MongoDB keeps milliseconds
    "price": Decimal128("123456.789012"),
    "tag": {"label": "x", "weight": 0.5},
    "tags": [{"label": "a", "weight": 1.0}, {"label": "b", "weight": None}],
    "numbers": [1, -2, 2**40],
    "extra": {"nested": {"list": [1, "two", None, {"three": 3.5}]}, "empty": {}},
    "author": AUTHOR,
    "blob": b"\x00\xffbytes\n",
    "flag": False,
    "ratio": 0.1 + 0.2,
    "text": "x" * 300,
}


def _stored(field: str) -> Any:
    value = VALUES[field]
    if field == "tag":
        return Tag(**value)
    if field == "tags":
        return [Tag(**v) for v in value]
    return value


@pytest.mark.parametrize("field", list(VALUES))
def test_a_stored_type_round_trips(cache: MongoCache, field: str) -> None:
    Author(id=AUTHOR, name="Ada").save()
    doc = Everything(**{field: _stored(field)}).save()
    stored = Everything._get_collection().find_one({"_id": doc.id})
    cache.get(Everything, "id", doc.id)
    hit = cache.get(Everything, "id", doc.id)
    assert cache.metrics.snapshot().hits == 1
    assert hit.to_mongo().to_dict() == stored  # the stored form, exactly, types included
    assert type(hit.to_mongo().to_dict()[field]) is type(stored[field])
    assert hit._created is False
    assert hit.id == doc.id
    assert not hit._get_changed_fields()
    if field == "author":
        assert hit._data["author"].id == AUTHOR  # kept as an id, not dereferenced
        assert hit.author.name == "Ada"  # and dereferenced on access, as a loaded document


def test_none_round_trips(cache: MongoCache) -> None:
    doc = Everything().save()
    cache.get(Everything, "id", doc.id)
    hit = cache.get(Everything, "id", doc.id)
    assert all(getattr(hit, name) in (None, [], {}) for name in VALUES)


# -- lookups --------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["id", "title"])
def test_every_call_refuses_a_value_no_field_holds(cache: MongoCache, field: str) -> None:
    for value in BAD_VALUES:
        for call in calls(cache, Post, field, value).values():
            with pytest.raises(InvalidLookup):
                call()
    assert cache.redis.dbsize() == 0


def test_unique_lookups_only(cache: MongoCache) -> None:
    post = Post(title="First Title", slug="first", site="s1").save()
    assert cache.get(Post, "title", "First Title").id == post.id
    assert cache.get(Post, "id", post.id).title == "First Title"
    assert cache.get(Post, ("site", "slug"), ("s1", "first")).id == post.id
    assert cache.get(Post, ("slug", "site"), ("first", "s1")).id == post.id
    with pytest.raises(InvalidLookup, match=r"valid lookups are 'id', 'title', \(site, slug\)"):
        cache.get(Post, "likes", 0)
    with pytest.raises(Post.DoesNotExist):
        cache.get(Post, "title", "nope")
    with pytest.raises(Post.DoesNotExist):
        cache.get(Post, "title", "nope")
    assert cache.metrics.snapshot().tombstone_hits == 1


def test_get_many_is_one_in_query(cache: MongoCache) -> None:
    posts = [Post(title=f"t{i}", slug=f"s{i}", site="x").save() for i in range(10)]
    calls: list[Any] = []
    original = cache.fetch_many

    def counting(cls: Any, field: Any, values: Any) -> Any:
        calls.append(values)
        return original(cls, field, values)

    cache.fetch_many = counting  # type: ignore[method-assign]
    got = cache.get_many(Post, "id", [p.id for p in posts] + [ObjectId()])
    assert [p.title for p in got[:-1]] == [f"t{i}" for i in range(10)]
    assert got[-1] is None
    assert len(calls) == 1
    assert [
        p.title for p in cache.get_many(Post, ("site", "slug"), [("x", "s3"), ("x", "s4")])
    ] == [
        "t3",
        "t4",
    ]


def test_objects_get_is_served_from_the_cache(cache: MongoCache) -> None:
    post = Post(title="First Title", slug="first", site="s1").save()
    Post.objects.get(title="First Title")
    assert Post.objects.get(title="First Title").id == post.id
    assert Post.objects.get(pk=post.id).title == "First Title"
    assert Post.objects.get(slug="first", site="s1").id == post.id
    assert cache.metrics.snapshot().hits == 1  # the title again; pk and the pair were misses
    assert Post.objects.get(likes=0).id == post.id  # not unique: the database
    assert Post.objects(site="s1").get(title="First Title").id == post.id  # filtered: same


# -- invalidation ---------------------------------------------------------------------------------


def test_save_invalidates_old_and_new_values(cache: MongoCache) -> None:
    post = Post(title="Old", slug="s", site="x").save()
    cache.get(Post, "title", "Old")
    with pytest.raises(Post.DoesNotExist):
        cache.get(Post, "title", "New")  # a tombstone under the new value
    post.title = "New"
    post.save()
    assert cache.get(Post, "title", "New").id == post.id
    with pytest.raises(Post.DoesNotExist):
        cache.get(Post, "title", "Old")


def test_save_of_a_stale_document_invalidates_what_the_database_held(cache: MongoCache) -> None:
    post = Post(title="t1", slug="s", site="x").save()
    stale = Post.objects(id=post.id).first()
    post.title = "t2"
    post.save()  # another process, say
    assert cache.get(Post, "title", "t2").id == post.id
    stale.title = "t3"  # it still believes t1
    stale.save()
    with pytest.raises(Post.DoesNotExist):
        cache.get(Post, "title", "t2")


def test_delete_invalidates(cache: MongoCache) -> None:
    post = Post(title="t", slug="s", site="x").save()
    cache.get(Post, "title", "t")
    cache.get(Post, ("site", "slug"), ("x", "s"))
    post.delete()
    for field, value in (("title", "t"), ("id", post.id), (("site", "slug"), ("x", "s"))):
        assert cached(cache, Post, field, value) is None
        with pytest.raises(Post.DoesNotExist):
            cache.get(Post, field, value)


def test_queryset_update_and_delete_invalidate_every_document(cache: MongoCache) -> None:
    posts = [Post(title=f"t{i}", slug=f"s{i}", site="x").save() for i in range(20)]
    ids = [p.id for p in posts]
    assert {p.likes for p in cache.get_many(Post, "id", ids)} == {0}
    Post.objects(site="x").update(inc__likes=1)
    assert {p.likes for p in cache.get_many(Post, "id", ids)} == {1}
    Post.objects(id=ids[0]).update_one(set__title="moved")
    with pytest.raises(Post.DoesNotExist):
        cache.get(Post, "title", "t0")
    assert cache.get(Post, "title", "moved").id == ids[0]
    posts[1].update(set__likes=7)  # a document's own update()
    assert cache.get(Post, "id", ids[1]).likes == 7
    Post.objects(id=ids[2]).modify(set__likes=9)
    assert cache.get(Post, "id", ids[2]).likes == 9
    Post.objects(id__in=ids[3:8]).delete()
    assert cache.get_many(Post, "id", ids[3:8]) == [None] * 5


def test_insert_clears_tombstones(cache: MongoCache) -> None:
    with pytest.raises(Post.DoesNotExist):
        cache.get(Post, "title", "new")
    Post.objects.insert([Post(title="new", slug="n", site="x")])
    assert cache.get(Post, "title", "new").slug == "n"


def test_a_stored_form_the_class_no_longer_accepts_is_a_miss(cache: MongoCache) -> None:
    post = Post(title="t", slug="s", site="x").save()
    cache.get(Post, "id", post.id)
    key = cache.get_keys(Post, "id", post.id)[0]
    raw = cache.redis.get(key)
    cache.redis.set(key, raw.replace(b'"likes"', b'"removed_field"'))
    assert cache.get(Post, "id", post.id).title == "t"
    assert cache.metrics.snapshot().decode_failures == 1


# -- regressions: what the first review of the adapter found --------------------------------------


def test_upserts_clear_tombstones(cache: MongoCache) -> None:
    with pytest.raises(Post.DoesNotExist):
        cache.get(Post, "title", "b")
    Post.objects(title="a").update_one(set__title="b", set__slug="b", set__site="x", upsert=True)
    assert cache.get(Post, "title", "b").slug == "b"
    with pytest.raises(Post.DoesNotExist):
        cache.get(Post, "title", "m")
    Post.objects(title="m").modify(upsert=True, set__slug="m", set__site="x")  # new=False
    assert cache.get(Post, "title", "m").slug == "m"
    assert Post.objects(title="b").update(set__likes=1) == 1  # the count, as without cachecow


def test_an_upsert_that_changes_its_filters_own_field(cache: MongoCache) -> None:
    """modify(upsert=True, new=False) inserting a document its own filter no longer matches."""
    with pytest.raises(Post.DoesNotExist):
        cache.get(Post, "title", "after")
    assert (
        Post.objects(title="before").modify(
            upsert=True, set__title="after", set__slug="s", set__site="x"
        )
        is None
    )  # new=False: nothing was there before
    assert cache.get(Post, "title", "after").slug == "s"


def test_insert_without_loading_clears_tombstones(cache: MongoCache) -> None:
    with pytest.raises(Post.DoesNotExist):
        cache.get(Post, "title", "ins")
    Post.objects.insert([Post(title="ins", slug="i", site="x")], load_bulk=False)
    assert cache.get(Post, "title", "ins").slug == "i"


def test_inheritance_and_references_are_not_lookups(cache: MongoCache) -> None:
    class Animal(me.Document):
        name = me.StringField(unique=True)
        meta = {"allow_inheritance": True, "collection": "cc_animals"}  # noqa: RUF012

    class Owner(me.Document):
        author = me.ReferenceField(Author, unique=True)
        handle = me.StringField(unique=True)
        meta = {"collection": "cc_owners"}  # noqa: RUF012

    with pytest.raises(cachecow.ConfigurationError, match="inheritance"):
        cache.get(Animal, "name", "rex")
    with pytest.raises(InvalidLookup, match=r"valid lookups are 'id', 'handle'"):
        cache.get(Owner, "author", Author(name="x"))


def test_get_of_a_narrowed_queryset_is_not_a_lookup(cache: MongoCache) -> None:
    Post(title="t", slug="s", site="x", likes=1).save()
    cache.get(Post, "title", "t")  # cached
    with pytest.raises(Post.DoesNotExist):
        Post.objects.none().get(title="t")
    with pytest.raises(Post.DoesNotExist):
        Post.objects.skip(1).get(title="t")
    raw = Post.objects.as_pymongo().get(title="t")
    assert isinstance(raw, dict)
    assert raw["likes"] == 1


def test_switched_collections_are_refused(cache: MongoCache) -> None:
    from mongoengine.context_managers import switch_collection

    Post(title="t", slug="s", site="x").save()
    assert cache.get(Post, "title", "t").slug == "s"  # the lookup is remembered: still checked
    with (
        switch_collection(Post, "cc_posts_old"),
        pytest.raises(cachecow.ConfigurationError, match="switch"),
    ):
        cache.get(Post, "title", "t")
    assert cache.get(Post, "title", "t").slug == "s"


def test_two_caches_watching_one_class_both_invalidate(
    cache: MongoCache, redis_client: redis.Redis
) -> None:
    other = MongoCache(redis_client, prefix="other:")
    other.watch(Post)
    try:
        post = Post(title="old", slug="s", site="x").save()
        cache.get(Post, "title", "old")
        other.get(Post, "title", "old")
        post.title = "new"
        post.save()
        for c in (cache, other):
            with pytest.raises(Post.DoesNotExist):
                c.get(Post, "title", "old")
    finally:
        other.unwatch()


def test_a_lookup_in_another_type_reaches_the_same_entry(cache: MongoCache) -> None:
    oid = ObjectId()
    with pytest.raises(Post.DoesNotExist):
        Post.objects.get(pk=str(oid))  # a string id: converted, so the tombstone is the id's
    Post(id=oid, title="t", slug="s", site="x").save()  # clears the id's tombstone
    assert Post.objects.get(pk=str(oid)).title == "t"
    assert cache.get(Post, "id", str(oid)).id == oid
    assert cache.metrics.snapshot().uncacheable == 0


def test_a_document_read_but_not_watched_is_reported_once(
    cache: MongoCache, caplog: pytest.LogCaptureFixture
) -> None:
    Item(id=1, payload="a").save()
    Item(id=2, payload="b").save()
    with caplog.at_level("WARNING", logger="cachecow"):
        cache.get(Item, "id", 1)
        cache.get_many(Item, "id", [1, 2])
        assert cache.peek(Post, "title", "nothing") is None
        with pytest.raises(Post.DoesNotExist):  # watched by the fixture: never reported
            cache.get(Post, "title", "nothing")
    warned = [r.getMessage() for r in caplog.records if "does not watch" in r.getMessage()]
    assert len(warned) == 1, warned
    assert warned[0].startswith("Item is read into the cache")

    caplog.clear()
    cache.watch(Item)
    with caplog.at_level("WARNING", logger="cachecow"):
        cache.get(Item, "id", 2)
    assert not [r for r in caplog.records if "does not watch" in r.getMessage()]


def test_watching_a_class_whose_bulk_writes_are_unseen_is_reported(
    cache: MongoCache, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="cachecow"):
        cache.watch(Post)  # a CachedQuerySet: nothing to report
        assert not caplog.records
        cache.watch(Item)
    (record,) = caplog.records
    assert record.getMessage().startswith("Item's queryset is QuerySet, not a CachedQuerySet")

    # What the warning is about: a bulk write through the plain queryset invalidates nothing.
    Item(id=7, payload="old").save()
    assert cache.get(Item, "id", 7).payload == "old"
    Item.objects(id=7).update(payload="new")
    assert cached(cache, Item, "id", 7).payload == "old"
