"""cachecow with MongoEngine: the original README's BlogPost example, invalidated for you.

Run it from the repository root (needs the ``demo`` and ``mongoengine`` extras, and mongomock
for the default in-process MongoDB: ``pip install -e '.[demo,mongoengine]' mongomock``)::

    python examples/mongoengine_app.py                                      # no services needed
    REDIS_URL=redis://127.0.0.1:6379/0 python examples/mongoengine_app.py    # a real Redis
    MONGODB_URL=mongodb://127.0.0.1:27017 python examples/mongoengine_app.py # a real MongoDB

By default MongoDB is mongomock (an in-process fake of the server) and Redis is an embedded
fakeredis (it runs cachecow's Lua). With REDIS_URL, every key lives under a random prefix and is
deleted at the end; with MONGODB_URL, the example's database and collections get unique names
and are dropped at the end (if the URL names a database, only the collections). The example
checks each claim it prints and exits non-zero if one breaks.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import secrets
from typing import Any

import mongoengine as me
import redis
from bson import DBRef, ObjectId

import cachecow

# mypy cannot see cachecow.adapters through the editable install (adapters/ maps onto it).
from cachecow.adapters.mongoengine import (  # type: ignore[import-not-found, unused-ignore]
    CachedQuerySet,
    MongoCache,
    set_default_cache,
)

NAME = f"cachecow_example_{secrets.token_hex(4)}"  # unique names: nothing clashes or stays
CREATED = dt.datetime(2024, 5, 17, 9, 30, 15, 123000)  # MongoDB keeps milliseconds


class Author(me.Document):  # type: ignore[misc]
    name = me.StringField(required=True)
    meta = {"collection": f"{NAME}_authors"}  # noqa: RUF012 - MongoEngine's declaration style


class BlogPost(me.Document):  # type: ignore[misc]
    title = me.StringField(unique=True, required=True)
    slug = me.StringField(unique=True, unique_with="site")  # per site: the lookup (site, slug)
    site = me.StringField(required=True)
    likes = me.IntField(default=0)
    date_created = me.DateTimeField()
    author = me.ReferenceField(Author)
    meta = {"collection": f"{NAME}_posts", "queryset_class": CachedQuerySet}  # noqa: RUF012


class CountingCache(MongoCache):  # type: ignore[misc]
    """A MongoCache that counts its queries to MongoDB (each fetch and fetch_many is one)."""

    queries = seen = 0

    def fetch(self, cls: Any, id_field: str | tuple[str, ...], id_val: Any) -> Any:
        self.queries += 1
        return super().fetch(cls, id_field, id_val)

    def fetch_many(self, cls: Any, id_field: str | tuple[str, ...], id_vals: Any) -> Any:
        self.queries += 1
        return super().fetch_many(cls, id_field, id_vals)

    def new(self) -> int:  # queries sent since the last call
        self.seen, new = self.queries, self.queries - self.seen
        return new


def post_by(cache: CountingCache, field: str, value: Any) -> BlogPost | None:
    """``cache.get(BlogPost, field, value)``, or None where it raises BlogPost.DoesNotExist."""
    try:
        post: BlogPost = cache.get(BlogPost, field, value)
    except BlogPost.DoesNotExist:
        return None
    return post


def check(ok: bool, claim: str) -> None:
    if not ok:
        raise SystemExit(f"EXAMPLE FAILED: {claim}")
    print(f"   ok: {claim}")


def step(number: int, title: str, explanation: str) -> None:
    print(f"\n{number}. {title}\n   {explanation}")


def run(client: redis.Redis, prefix: str) -> None:
    ada = Author(name="Ada Lovelace").save()
    BlogPost(
        title="First Title", slug="first", site="blog", date_created=CREATED, author=ada
    ).save()
    news = [
        BlogPost(title=f"News {i}", slug=f"news-{i}", site="news", date_created=CREATED).save()
        for i in range(10)
    ]
    cache = CountingCache(client, prefix=prefix)
    set_default_cache(cache)  # the cache CachedQuerySet's get() and bulk writes use

    step(1, "The original README's example", "Fetched from MongoDB, cached, then from Redis.")
    post = cache.get(BlogPost, "title", "First Title")
    print(f"   cache.get(BlogPost, 'title', 'First Title') -> {post.slug!r} on {post.site!r}")
    check(cache.new() == 1, "the miss ran 1 MongoDB query and cached the document")
    post = cache.get(BlogPost, "title", "First Title")
    hits = cache.metrics.snapshot().hits
    check(cache.new() == 0 and hits == 1, "the second get: a hit in Redis, 0 MongoDB queries")
    cache.invalidate(BlogPost, "title", "First Title")
    post = cache.get(BlogPost, "title", "First Title")
    check(cache.new() == 1, "after cache.invalidate(...), the next get queries MongoDB again")

    step(2, "Any unique lookup", "By the ObjectId, and by ('site', 'slug') in any order.")
    by_id = cache.get(BlogPost, "id", post.id)
    print(f"   cache.get(BlogPost, 'id', ObjectId('{post.id}')) -> {by_id.title!r}")
    check(isinstance(post.id, ObjectId) and by_id.title == "First Title", "the ObjectId finds it")
    pair = cache.get(BlogPost, ("site", "slug"), ("blog", "first"))
    cache.new()
    same = cache.get(BlogPost, ("slug", "site"), ("first", "blog"))
    print(f"   cache.get(BlogPost, ('slug', 'site'), ('first', 'blog')) -> {same.title!r}")
    check(pair.id == same.id == post.id and cache.new() == 0, "('slug', 'site') is a hit too")

    step(3, "Only unique lookups", "Many posts can have 0 likes: a lookup by likes is refused.")
    try:
        cache.get(BlogPost, "likes", 0)
        check(False, "a lookup by likes is refused")
    except cachecow.InvalidLookup as exc:
        print(f"   InvalidLookup: {exc}")
        check("lookups are 'id', 'title', (site, slug)" in str(exc), "it lists the valid ones")

    step(4, "cache.watch(BlogPost)", "A renamed title, saved: no invalidate() call anywhere.")
    cache.watch(BlogPost)
    check(post_by(cache, "title", "Hello, World") is None, "DoesNotExist: a tombstone is cached")
    before = cache.metrics.snapshot().invalidations
    post.title = "Hello, World"
    post.save()
    done = cache.metrics.snapshot().invalidations - before
    print(f"   post.title = 'Hello, World'; post.save() -> {done} lookups invalidated")
    check(done == 4, "the save invalidated the id, both titles and ('site', 'slug')")
    check(post_by(cache, "title", "First Title") is None, "the old title: BlogPost.DoesNotExist")
    renamed = post_by(cache, "title", "Hello, World")
    check(renamed is not None and renamed.id == post.id, "the new title finds the post")

    step(5, "A bulk update()", "Cache 10 news posts, like them all in one update, read again.")
    ids = [p.id for p in news]
    cache.get(BlogPost, "id", post.id)  # the blog's post, cached by id too
    cache.new()
    check([p.likes for p in cache.get_many(BlogPost, "id", ids)] == [0] * 10, "10 at 0 likes")
    check(cache.new() == 1, "10 misses cost one MongoDB query ($in)")
    before = cache.metrics.snapshot().invalidations
    BlogPost.objects(site="news").update(inc__likes=1)
    done = cache.metrics.snapshot().invalidations - before
    print(f"   BlogPost.objects(site='news').update(inc__likes=1) -> {done} lookups invalidated")
    check(done == 30, "the id, title and ('site', 'slug') of all 10 posts were invalidated")
    check({p.likes for p in cache.get_many(BlogPost, "id", ids)} == {1}, "all 10 have 1 like")
    check(cache.new() == 1, "the 10 posts were read again, in one query")
    check(cache.get(BlogPost, "id", post.id).likes == 0, "the blog's post: untouched")
    check(cache.new() == 0, "and still served from Redis")

    step(6, "CachedQuerySet", "BlogPost.objects.get() of a unique lookup is served by the cache.")
    hits = cache.metrics.snapshot().hits
    got = BlogPost.objects.get(title="Hello, World")
    print(f"   BlogPost.objects.get(title='Hello, World') -> id {got.id}")
    check(cache.new() == 0 and cache.metrics.snapshot().hits == hits + 1, "a hit, 0 queries")
    check(BlogPost.objects.get(pk=post.id).title == "Hello, World", "objects.get(pk=...) too")
    hits = cache.metrics.snapshot().hits
    BlogPost.objects(site="blog").get(title="Hello, World")
    check(cache.metrics.snapshot().hits == hits, "a filtered queryset's get() goes to MongoDB")

    step(7, "Deletes", "A document's delete() and a queryset's delete() both invalidate.")
    doomed = cache.get(BlogPost, "title", "News 9")
    doomed.delete()
    check(post_by(cache, "id", doomed.id) is None, "doomed.delete(): by id, DoesNotExist")
    check(post_by(cache, "title", "News 9") is None, "by title too")
    check(cache.get(BlogPost, "title", "News 8").likes == 1, "'News 8', with its 1 like, is cached")
    BlogPost.objects(title="News 8").delete()
    check(post_by(cache, "title", "News 8") is None, "objects(...).delete(): DoesNotExist")

    step(8, "Exact round trips", "A cached document's to_mongo() is what MongoDB stores.")
    cache.new()
    hit = cache.get(BlogPost, "id", post.id)
    check(cache.new() == 0, "served from Redis")
    stored = BlogPost._get_collection().find_one({"_id": post.id})
    cached = hit.to_mongo().to_dict()
    print(f"   cached: _id {cached['_id']!r}, author {cached['author']!r}")
    check(cached == stored, "to_mongo() of the cached document equals the stored document")
    exact = type(cached["_id"]) is ObjectId and cached["date_created"] == CREATED
    check(exact, "the _id is an ObjectId, the datetime exact to the millisecond")
    check(isinstance(hit._data["author"], DBRef), "the author is kept as an id, not loaded")
    check(hit.author.name == "Ada Lovelace", "and dereferenced on access, as usual")

    step(9, "The counters", "cache.metrics.snapshot().as_dict():")
    counters = cache.metrics.snapshot().as_dict()
    width = max(map(len, counters))
    for name, count in counters.items():
        print(f"   {name:<{width}}  {count:>3}")


def main() -> None:
    redis_url, mongodb_url = os.environ.get("REDIS_URL"), os.environ.get("MONGODB_URL")
    client: redis.Redis
    if redis_url:
        client = cachecow.connect(redis_url)
        prefix = f"cachecow-mongo:{secrets.token_hex(4)}:"
        print(f"Redis: {redis_url} (keys under {prefix}, deleted at the end)")
    else:
        import fakeredis  # the demo extra: an in-process Redis that runs Lua through lupa

        client = fakeredis.FakeRedis()
        prefix = "cachecow-mongo:"
        print("Redis: embedded fakeredis (set REDIS_URL to use a real server)")
    if mongodb_url:
        me.connect(NAME, host=mongodb_url)  # a database named in the URL wins over NAME
        shown = re.sub(r"//[^/@]*@", "//***@", mongodb_url)
        print(f"MongoDB: {shown} (database {me.get_db().name}, collections {NAME}_*)")
    else:
        import mongomock  # an in-process fake of a MongoDB server

        me.connect(
            "cachecow_example", host="mongodb://localhost", mongo_client_class=mongomock.MongoClient
        )
        print("MongoDB: mongomock, in process (set MONGODB_URL to use a real server)")
    try:
        run(client, prefix)
    finally:
        set_default_cache(None)  # and unwatch
        Author.drop_collection()
        BlogPost.drop_collection()
        if me.get_db().name == (NAME if mongodb_url else "cachecow_example"):  # ours
            me.get_connection().drop_database(me.get_db().name)
        me.disconnect()
        leftovers = list(client.scan_iter(match=f"{prefix}*"))
        if leftovers:
            client.delete(*leftovers)
        client.close()
    print("\nAll claims held.")


if __name__ == "__main__":
    main()
