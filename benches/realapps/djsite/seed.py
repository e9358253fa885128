"""Create the SQLite database of the django-orm scenario and seed it.

    RSWB_DATA_DIR=/tmp/dir PYTHONPATH=benches python -m realapps.djsite.seed

Creates the items table (and nothing else: no view touches sessions or
users) in $RSWB_DATA_DIR/django-bench.sqlite3 and inserts 100 rows.
"""

import os
import sys

ROWS = 100


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "realapps.djsite.settings")
    import django

    django.setup()
    from django.db import connection

    from realapps.djsite.items.models import Item

    with connection.schema_editor() as editor:
        editor.create_model(Item)
    Item.objects.bulk_create(
        Item(name="item-%03d" % i, price="%d.%02d" % (i, i * 7 % 100), quantity=i * 13 % 50)
        for i in range(1, ROWS + 1))
    count = Item.objects.count()
    print("seeded %d rows into %s" % (count, connection.settings_dict["NAME"]))
    return 0 if count == ROWS else 1


if __name__ == "__main__":
    sys.exit(main())
