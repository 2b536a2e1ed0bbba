"""The laboratory's Definitions: a `redetections/MODEL` asset per model, and their job."""

import dagster as dg

from imgpipeline.defs.laboratory.assets import redetections_assets

assets = redetections_assets()

defs = dg.Definitions(assets=assets)
