"""The storage seam: the database (store.db: its threads, transactions and rows), the cache's
storage, the database files, and every SQL statement (store.sql: named queries, migrations and
the schema snapshot). Nothing outside this package imports a database driver or holds SQL."""
