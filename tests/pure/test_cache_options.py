"""``cachecow.CacheOptions`` (the adapters' ``**options``) and the keyword-only parameters of
the cache's constructor are one list: the same names, in the same order, of the same types."""

from __future__ import annotations

import inspect
import typing

import cachecow
from cachecow._protocol import CacheCowBase


def test_cache_options_are_the_constructors_keyword_only_parameters() -> None:
    signature = inspect.signature(CacheCowBase.__init__)
    keyword_only = [p.name for p in signature.parameters.values() if p.kind is p.KEYWORD_ONLY]
    hints = typing.get_type_hints(CacheCowBase.__init__)
    options = typing.get_type_hints(cachecow.CacheOptions)
    assert list(options) == keyword_only
    for name in keyword_only:
        assert options[name] == hints[name], name
    assert cachecow.CacheOptions.__total__ is False  # every option may be left out


def test_busy_is_a_policy_or_its_name() -> None:
    hints = typing.get_type_hints(CacheCowBase.__init__)
    assert typing.get_args(hints["busy"]) == (cachecow.BusyPolicy, cachecow.BusyName)
    assert set(typing.get_args(cachecow.BusyName)) == {p.value for p in cachecow.BusyPolicy}
