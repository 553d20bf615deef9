"""The settings the mypy plugin loads (``django_settings_module``): this app alone."""

INSTALLED_APPS = ["app_django_stubs"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
