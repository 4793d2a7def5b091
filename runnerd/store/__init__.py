"""The storage seam: the database file, its schema and every SQL statement."""
