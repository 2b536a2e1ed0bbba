"""`openvino`: the ONNX form of the model compiled by OpenVINO for the CPU, at the precision set, or
its INT8 form (`imgpipeline.vision.int8`)."""

from __future__ import annotations

import numpy as np

from imgpipeline import ConfigError
from imgpipeline.vision.engines import register
from imgpipeline.vision.engines.base import Engine, Model, Network, Sessions
from imgpipeline.vision.model_files import INT8_XML
from imgpipeline.vision.models import DEFAULT, ModelSpec


def import_openvino():
    """OpenVINO, with its telemetry declined before it starts.

    Importing `openvino` starts the telemetry of its model converter, which counts as consent a
    home folder without a consent file (and writes a client id there). Declining in this
    process, as a consent file holding "0" would, keeps a site's data and home folder to itself.
    """
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:  # a release without the telemetry package has nothing to decline
        pass
    else:
        OptInChecker.check = lambda self, *args, **kwargs: ConsentCheckResult.DECLINED
    import openvino

    return openvino


@register
class OpenVINO(Engine):
    """One compiled model, an infer request per worker: the throughput hint for a pool (workers 0
    takes the compiled model's optimal number of requests), the latency hint for one detector.

    A model compiled before a fork hangs its first inference in the child, so before a fork OpenVINO
    is only imported and the model file hashed; each run compiles its own (0.1–0.4 s).
    """

    name = "openvino"
    runs = "onnx"
    # OpenVINO's inference precision: `default` is the CPU's own (bf16 where the CPU has it); `int8`
    # runs the INT8 model, its layers kept at floating point at the CPU's own precision.
    precisions = ("default", "f32", "bf16", "f16", "int8")
    default_means = "runs at the CPU's own precision (bf16 where the CPU has it)"
    order = 1

    def model_file_for(self, spec: ModelSpec, precision: str) -> str:
        if precision != "int8":
            return spec.file("onnx")
        if spec.name != DEFAULT:
            raise ConfigError(f"the INT8 form is made and proven for {DEFAULT} only; run {spec.name} at the "
                              "precision `auto` or `f32`")
        return INT8_XML

    def auto(self, model: Model) -> tuple[str, str]:
        from imgpipeline.vision import int8

        if model.spec.name != DEFAULT:
            return "f32", (f"INT8 and the CPU's own precision are proven against f32 for {DEFAULT} only; "
                           f"{model.spec.name} runs at f32")
        return int8.auto(model.folder)

    def pool_shape(self, workers: int, threads: int, cores: int) -> tuple[int, int]:
        return workers, 0  # 0 workers: the compiled model's optimal number of requests

    def import_runtime(self) -> None:
        import_openvino()

    def sessions(self, network: Network, count: int, threads: int, precision: str) -> Sessions:
        core = import_openvino().Core()
        model = core.read_model(str(network.path))
        model.reshape([1, 3, network.input_size, network.input_size])  # its one input
        config = {"PERFORMANCE_HINT": "LATENCY" if count == 1 else "THROUGHPUT"}
        if count > 1:
            config["PERFORMANCE_HINT_NUM_REQUESTS"] = count
        if precision not in ("default", "int8"):
            config["INFERENCE_PRECISION_HINT"] = precision
        try:
            compiled = core.compile_model(model, "CPU", config)
        except RuntimeError as error:
            raise ConfigError(f"OpenVINO cannot run the model at precision {precision!r} on this CPU: "
                              f"{str(error).splitlines()[0]}; use the precision `default` or `f32`") from None
        hint = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        actual = "int8" if precision == "int8" else hint
        requests = count or int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))

        def one():
            request = compiled.create_infer_request()

            def infer(blob: np.ndarray):
                request.infer({0: blob})
                return [request.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs))]

            return infer

        return Sessions([one() for _ in range(max(1, requests))], actual).warmed(network.input_size)
