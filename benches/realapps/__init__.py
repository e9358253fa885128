"""Real-application WSGI callables for benches/run.py (Flask and Django).

    realapps.flaskapp:app            /hello, /json, /jinja
    realapps.djsite.wsgi:application /hello, /orm (SQLite in $RSWB_DATA_DIR)

Every server in a scenario is given the same callable: rswaitress and waitress
through serve(), gunicorn and granian through these module:attr targets (with
benches/ as their working directory).
"""
