"""What people look at: the viewer's pages and the daily report, drawn from the warehouse.

Queries take a DuckDB connection with the warehouse views; charts are SVG drawn here, so pages and
reports need no script and no network. The viewer's web app is app.py with a module per page group in
routes/; `imgpipeline serve` (cli/serve.py) opens the warehouse it is given and runs it.
"""
