"""The viewer's pages, one module per group; each module's `routes` go into the app (web/app.py)."""
