"""`imgpipeline demo`: set up the embedded defaults and run the pipeline end to end."""

from __future__ import annotations

from imgpipeline.config import Settings, services_env_file


def run_demo() -> int:
    from imgpipeline.cli import dagster_home, run_checks
    from imgpipeline.config import state_dir
    from imgpipeline.fetch import fetch_samples, fetch_weights
    from imgpipeline.services import LocalServices

    print("1/4 model weights")
    fetch_weights()
    print("2/4 sample data")
    samples = fetch_samples()
    print("3/4 local services")
    services = LocalServices(state_dir() / "services")
    for status in services.up():
        print(f"  {status['name']:<6} ready at {status['address']}")
    services_env_file().write_text(services.env_file_text())
    dagster_home()
    settings = Settings.from_env()
    run_checks(settings)

    print("4/4 detection on a sample photo")
    from imgpipeline.definitions import build_resources
    from imgpipeline.vision.quality import decode_image

    detector = build_resources(settings)["detector"].load()
    found = detector.detect(decode_image(samples["bus.jpg"].read_bytes()))
    for d in found:
        print(f"  {d.class_name:<10} {d.confidence:.2f} at {d.box}")
    print("The streaming path (producers, frames_sensor, detect_frames) is next.")
    return 0
