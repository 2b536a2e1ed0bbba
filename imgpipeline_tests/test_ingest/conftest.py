"""The session's Mosquitto for the MQTT bridge's tests."""

from __future__ import annotations

import pytest

from imgpipeline.resources.mqtt import MqttSettings


@pytest.fixture
def mqtt(services) -> MqttSettings:
    assert services.mqtt.running(), "mosquitto is not running: apt-get install mosquitto (.ci/run does)"
    return MqttSettings(broker=services.mqtt.address(services.mqtt.ports))
