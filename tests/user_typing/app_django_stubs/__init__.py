"""A Django app as a django-stubs user writes it, checked by ``mypy --strict`` with the stubs'
plugin (see test_user_typing.py): the plugin loads ``settings`` and so registers ``models``."""
