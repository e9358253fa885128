from django.urls import path

from . import views

urlpatterns = [
    path("hello", views.hello),
    path("orm", views.orm_rows),
]
