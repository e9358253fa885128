from django.apps import AppConfig


class ItemsConfig(AppConfig):
    name = "realapps.djsite.items"
    label = "items"
    default_auto_field = "django.db.models.AutoField"
