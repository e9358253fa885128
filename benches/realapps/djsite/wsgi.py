"""WSGI entry point of the benchmark's Django project: realapps.djsite.wsgi:application."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "realapps.djsite.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
