"""The laboratory's assets: an hourly `redetections/MODEL` asset for every model of the registry.

Each is materialized on demand only, by a backfill over the hours to re-detect (`imgpipeline redetect`
or the UI), one run per hour so the backfill's page shows its progress hour by hour and a run killed
mid-range costs only its own hour. Its code version is the model file's sha256: when a model's file
changes, the UI marks every hour re-detected with the old one as changed.
"""

import dagster as dg

from imgpipeline import ConfigError
from imgpipeline.defs.hours import hour_key
from imgpipeline.defs.laboratory.redetect import part_key, redetect_hour
from imgpipeline.defs.partitions import hourly_partitions
from imgpipeline.defs.tables import FRAMES, LANDING_ASSET, REDETECTIONS, redetections_key
from imgpipeline.defs.warehouse.assets import landing_of
from imgpipeline.resources import DetectorResource, StorageResource, TrackingResource
from imgpipeline.vision import models

# A run tag: re-detect only these sources (comma-separated) of the hour.
SOURCES_TAG = "imgpipeline/sources"


def model_version(spec: models.ModelSpec) -> str:
    """The code version of a model's re-detections: the sha256 of the file its engines run (the
    ONNX form, which every Darknet model also has)."""
    return spec.sha256.get(spec.files.get("onnx", ""), "unknown")[:16]


def the_model(detector: DetectorResource, model: str) -> DetectorResource:
    """The detector's settings with another model; a precision set for the live model applies to it
    only (INT8 is proven for one model): another runs at `auto`."""
    same = model == detector.model
    return DetectorResource(models_dir=detector.models_dir, model=model, engine=detector.engine,
                            precision=detector.precision if same else "auto", threads=detector.threads,
                            workers=detector.workers, max_pixels=detector.max_pixels,
                            confidence=detector.confidence, nms=detector.nms, classes=detector.classes)


def redetections_asset(spec: models.ModelSpec) -> dg.AssetsDefinition:
    name = spec.name

    @dg.asset(
        key=redetections_key(name),
        description=f"The hour's stored frames detected again with {name} ({spec.layout}, input "
                    f"{spec.input_size}) and tracked, in the columns of `detections`, beside the live ones.",
        deps=[LANDING_ASSET, FRAMES.key],
        partitions_def=hourly_partitions,
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=1),
        code_version=model_version(spec),
        group_name="laboratory",
        kinds={"parquet"},
    )
    def _redetections(context: dg.AssetExecutionContext, storage: StorageResource,
                      detector: DetectorResource, tracking: TrackingResource) -> dg.MaterializeResult:
        store = storage.open()
        hour = context.partition_time_window.start
        sources = [s for s in context.run.tags.get(SOURCES_TAG, "").split(",") if s] or None
        landing = landing_of(store, hour)
        if landing is None:
            raise dg.Failure(f"{hour_key(hour)}: its day's landing was deleted by retention; its frames "
                             "cannot be found again")
        pool = the_model(detector, name).load_pool()
        done = redetect_hour(store, hour, landing, pool, tracking.settings(), model=name,
                             max_bytes=storage.max_frame_bytes, max_pixels=detector.max_pixels,
                             sources=sources, log=context.log.info)
        if done.kept:
            context.log.info(f"{hour_key(hour)}: already re-detected with {name} from the same landing and "
                             "model file; left as it was")
        if done.missing:
            context.log.warning(f"{len(done.missing)} frames could not be read again (kept out): "
                                + "; ".join(done.missing[:5]))
        stored = REDETECTIONS.read(store, part_key(hour, name))
        return dg.MaterializeResult(metadata={
            "rows": dg.MetadataValue.int(stored.num_rows),
            "frames_detected_again": dg.MetadataValue.int(done.frames),
            "frames_missing": dg.MetadataValue.int(len(done.missing)),
            "kept_as_it_was": done.kept,
            "model": pool.identity.model, "model_sha256": pool.identity.model_sha256,
            "engine": pool.identity.engine, "precision": pool.identity.precision,
            "path": dg.MetadataValue.path(store.uri(part_key(hour, name))),
        })

    return _redetections


def redetections_assets() -> list[dg.AssetsDefinition]:
    """One asset per model the registry knows when the code location loads (a model added later
    appears once the location is reloaded)."""
    found = []
    for name in models.known():
        try:
            found.append(redetections_asset(models.get(name)))
        except ConfigError:  # an unreadable manifest: `imgpipeline models list` says why; the rest load
            continue
    return found
