"""ORM adapters for cachecow, installed as ``cachecow.adapters``.

Each adapter is one module that subclasses :class:`cachecow.CacheCow` and supplies ``fetch``,
``serialize``, ``deserialize`` and invalidation wired into its ORM's write paths after commit.
This package imports no framework: import the adapter module you need
(``cachecow.adapters.sqlalchemy``, ``cachecow.adapters.django``,
``cachecow.adapters.mongoengine``) once its extra is installed.
"""

__all__: list[str] = []
