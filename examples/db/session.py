# The prompt session of examples/db: run it with `sperse run` against the cluster of
# cluster.toml (see README.md here), or type the lines at the `sperse` prompt.
from dbtools import query, where_is_the_database

# Runs on the server tagged db, next to its SQLite file; `rows` is pending until it arrives.
rows = remote[db] query("select region, count(*), sum(amount) from sales group by region")

# Runs here, by itself, when `rows` arrives.
summary = {region: (count, round(total, 2)) for region, count, total in rows}
print("sales by region:", summary)

# Where did that run? The database is in the db server's own directory.
location = remote[db] where_is_the_database()
print("the database is", location)
