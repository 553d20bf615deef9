"""Django's own test suite run with cachecow's CachedManager as every model's default manager.

``python -m tests.django_suite.run --help`` runs it; ``test_django_suite.py`` compares it with a
plain run of the same tests (see ``expected.py`` for the differences that are expected).
"""
