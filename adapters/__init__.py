"""ORM adapters for cachecow, installed as ``cachecow.adapters``.

Each adapter is one module that subclasses :class:`cachecow.CacheCow` and supplies ``fetch``,
``serialize``, ``deserialize`` and invalidation wired into its ORM's write paths after commit;
``_base.py`` gives them the lookup hooks, the batched ``fetch_many`` and the row codec.
This package imports no framework: import the adapter you need once its extra is installed.

- ``cachecow.adapters.sqlalchemy`` (``pip install 'cachecow-orm[sqlalchemy]'``): SQLAlchemy 2,
  sync and async.
- ``cachecow.adapters.django`` (``pip install 'cachecow-orm[django]'``): Django 4.2 and newer.
- ``cachecow.adapters.mongoengine`` (``pip install 'cachecow-orm[mongoengine]'``): MongoEngine.
"""

__all__: list[str] = []
