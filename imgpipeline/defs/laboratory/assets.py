"""The laboratory's assets: an hourly `redetections/MODEL` asset for every model of the registry.

Each is materialized on demand only, by a backfill over the hours to re-detect (`imgpipeline redetect`
or the UI), one run per hour, in order (an hour's tracks go on from the hour before), so the
backfill's page shows its progress hour by hour and a run killed mid-range costs only its own hour.
Its code version is the model file's sha256: when a model's file changes, the UI marks every hour
re-detected with the old one as changed.
"""

import dataclasses

import dagster as dg

from imgpipeline import ConfigError
from imgpipeline.defs.hours import hour_key
from imgpipeline.defs.laboratory.redetect import part_key, redetect_hour
from imgpipeline.defs.partitions import hourly_partitions
from imgpipeline.defs.tables import (
    FRAMES,
    LANDING_ASSET,
    REDETECTIONS,
    model_key,
    model_op_name,
    redetections_key,
    same_op_name,
)
from imgpipeline.defs.warehouse.assets import landing_of
from imgpipeline.resources import DetectorResource, StorageResource, TrackingResource
from imgpipeline.vision import models

# A run tag: re-detect only these sources (comma-separated) of the hour.
SOURCES_TAG = "imgpipeline/sources"


def model_version(spec: models.ModelSpec) -> str:
    """The code version of a model's re-detections: the published sha256 of the file its engines run
    (the ONNX form, which every Darknet model also has)."""
    return spec.sha256.get(spec.files.get("onnx", ""), "unknown")[:16]


def model_data_version(spec: models.ModelSpec) -> dg.DataVersion:
    """The data version of a model: its ONNX file's sha256 as found (`missing` when it is not there)."""
    from imgpipeline.vision.model_files import file_sha256

    path = spec.folder / spec.files.get("onnx", "")
    return dg.DataVersion(file_sha256(path)[:16] if path.is_file() else "missing")


def model_asset(spec: models.ModelSpec):
    """The model as an observable source: observed by `imgpipeline redetect` before its backfill, by each
    re-detection run (for the runs after it) and from the UI, so the hours re-detected with another
    version of its file show as stale."""
    name = spec.name

    @dg.observable_source_asset(key=model_key(name), group_name="laboratory",
                                description=f"{name}: {spec.layout}, input {spec.input_size}, {spec.source}; "
                                            "its data version is its ONNX file's sha256.")
    def _model():
        return model_data_version(models.get(name))

    return _model


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
        # The hour before, of the same model: its tracks go on in this hour, so a backfill makes the
        # hours one after another, in order.
        deps=[LANDING_ASSET, FRAMES.key, model_key(name),
              dg.AssetDep(redetections_key(name), partition_mapping=dg.TimeWindowPartitionMapping(
                  start_offset=-1, end_offset=-1, allow_nonexistent_upstream_partitions=True))],
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
        version = model_data_version(models.get(name))
        context.log_event(dg.AssetObservation(model_key(name), tags={"dagster/data_version": version.value}))
        sources = [s for s in context.run.tags.get(SOURCES_TAG, "").split(",") if s] or None
        landing = landing_of(store, hour)
        if landing is None:
            raise dg.Failure(f"{hour_key(hour)}: its day's landing was deleted by retention; its frames "
                             "cannot be found again")
        chosen = the_model(detector, name)
        pool = chosen.load_pool()
        how = {"confidence": chosen.confidence, "nms": chosen.nms, "classes": chosen.classes,
               "input_size": chosen.input_size, "tracker": dataclasses.asdict(tracking.settings())}
        done = redetect_hour(store, hour, landing, pool, tracking.settings(), model=name, how=how,
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


def redetections_assets() -> list:
    """For each model the registry knows when the code location loads (a model added later appears once
    the location is reloaded): the model as a source, and its re-detections. A folder that cannot load
    takes its place as an asset that says why, and its warning is logged: the rest load."""
    kept, skipped = loadable_models()
    for name, why in skipped.items():
        dg.get_dagster_logger().warning(f"model folder {name} is not loaded: {why}")
    return ([made for spec in kept for made in (model_asset(spec), redetections_asset(spec))]
            + [not_loaded(name, why) for name, why in skipped.items()])


def loadable_models() -> tuple[list[models.ModelSpec], dict[str, str]]:
    """The registry's models whose assets load together, and why each other folder is left out: its
    manifest cannot be read, or its name gives the op name of a model before it (the built-in ones
    first, then by name), which Dagster refuses to load."""
    kept: list[models.ModelSpec] = []
    skipped: dict[str, str] = {}
    for name in models.known():
        try:
            spec = models.get(name)
        except ConfigError as error:
            skipped[name] = str(error)
            continue
        if other := same_op_name(name, [k.name for k in kept]):
            skipped[name] = (f"its assets' ops would be named as those of the model {other} "
                             f"({model_op_name(name)}), and Dagster loads no two ops of one name; rename "
                             f"{spec.folder} to a name that differs from {other} in more than `-`, `.` and "
                             "`_`, then reload")
            continue
        kept.append(spec)
    return kept, skipped


def not_loaded(name: str, why: str) -> dg.AssetSpec:
    """A model folder left out, shown in the UI where the model would be, with why."""
    return dg.AssetSpec(model_key(name), group_name="laboratory", description=f"Not loaded: {why}",
                        metadata={"not_loaded": why})
