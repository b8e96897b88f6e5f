"""`phonevault serve`: a local, read-only web view over the library API (app.py), behind a token (security.py)."""
