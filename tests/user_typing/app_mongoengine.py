"""User code of the MongoEngine adapter, type-checked by ``mypy --strict`` (MongoEngine has no
type information: its classes are ``Any``)."""

from __future__ import annotations

import mongoengine as me
import redis
from typing_extensions import assert_type

from cachecow.adapters.mongoengine import MongoCache


class Post(me.Document):  # type: ignore[misc]  # MongoEngine is untyped
    title = me.StringField(unique=True)


def reads(client: redis.Redis) -> Post:
    cache = MongoCache(client, ttl=30, wait_timeout=0.5)
    assert_type(cache.get_many(Post, "title", ["a"]), list[Post | None])
    post = cache.get(Post, "title", "a")
    assert_type(post, Post)
    return post
