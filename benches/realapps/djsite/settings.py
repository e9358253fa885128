"""Settings of the Django project used by the django-* scenarios of benches/run.py.

A minimal project: the middleware list a new Django project gets by default,
DEBUG off, every host allowed, one app (items) with one model, and an SQLite
database file in $RSWB_DATA_DIR (the benchmark run's temporary directory),
created and seeded by realapps.djsite.seed before the servers start.
"""

import os

DEBUG = False
ALLOWED_HOSTS = ["*"]
SECRET_KEY = "rswaitress-benchmark-only-not-a-secret"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "realapps.djsite.items",
]

# Django's default MIDDLEWARE list, in its default order.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "realapps.djsite.urls"
WSGI_APPLICATION = "realapps.djsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.path.join(
            os.environ.get("RSWB_DATA_DIR") or os.path.dirname(os.path.abspath(__file__)),
            "django-bench.sqlite3"),
    }
}

USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
