"""Flask application for the flask-* scenarios of benches/run.py.

    /hello   "Hello, World!" from a view returning a str     (flask-hello)
    /json    jsonify() of a list of 20 small dicts           (flask-json)
    /jinja   a Jinja template, compiled once at import, rendering a 60-row
             HTML table with autoescaping on                  (flask-jinja)
"""

from flask import Flask, jsonify

app = Flask(__name__)

ITEMS = [
    {"id": i, "name": "item-%02d" % i, "price": round(1.25 * i, 2), "in_stock": i % 3 != 0}
    for i in range(1, 21)
]

ROWS = [
    {"id": i, "name": "Row <%d> & co" % i, "qty": i * 7 % 13, "price": "%.2f" % (i * 0.99)}
    for i in range(1, 61)
]

TABLE_SOURCE = """<!doctype html>
<html><head><title>{{ title }}</title></head>
<body>
<h1>{{ title }}</h1>
<table>
<thead><tr><th>#</th><th>name</th><th>qty</th><th>price</th></tr></thead>
<tbody>
{%- for row in rows %}
<tr class="{{ loop.cycle('odd', 'even') }}"><td>{{ row.id }}</td><td>{{ row.name }}</td><td>{{ row.qty }}</td><td>{{ row.price }}</td></tr>
{%- endfor %}
</tbody>
</table>
<p>{{ rows|length }} rows</p>
</body></html>
"""

# Compiled once, here, at import; the view only renders it.
TABLE = app.jinja_env.from_string(TABLE_SOURCE)


@app.route("/hello")
def hello():
    return "Hello, World!"


@app.route("/json")
def json_list():
    return jsonify(ITEMS)


@app.route("/jinja")
def jinja_table():
    return TABLE.render(title="Inventory", rows=ROWS)
