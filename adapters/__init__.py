"""ORM adapters for cachecow, installed as ``cachecow.adapters``.

Each adapter is one module that subclasses :class:`cachecow.CacheCow` and supplies ``fetch``,
``serialize``, ``deserialize`` and invalidation wired into its ORM's write paths after commit.
This package imports no framework. No adapter ships yet: SQLAlchemy, Django and MongoEngine
adapters are planned, each as its own module behind its extra (``cachecow[sqlalchemy]`` ...).
"""

__all__: list[str] = []
