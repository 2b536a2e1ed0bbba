"""The alert rules file: what loads, and what is refused with the fix (vision/alert_rules)."""

from pathlib import Path

import pytest

from imgpipeline import ConfigError
from imgpipeline.paths import PACKAGE_DIR
from imgpipeline.vision import alert_rules, zones
from imgpipeline.vision.model_files import NAMES
from imgpipeline_tests.pipeline import code_location_rules

ZONES = zones.parse(b"""
sources:
  cam:
    lines: [{name: door, start: [320, 0], end: [320, 480]}]
    zones: [{name: bench, polygon: [[400, 0], [600, 0], [600, 480]]}]
""")
COCO = (PACKAGE_DIR.parent / "models" / NAMES).read_text().split("\n")


def test_the_checkout_rules_load_and_name_what_the_zones_file_draws():
    rules = alert_rules.load(PACKAGE_DIR.parent / "alerts.yaml")
    streets = zones.load(PACKAGE_DIR.parent / "zones.yaml")
    rules.check_against(streets, COCO)
    assert {r.kind for r in rules.rules} >= {"class", "count", "zone_enter", "line_cross", "dark", "silent"}
    assert len(rules.sha256) == 64


@pytest.mark.parametrize("text, says", [
    (b"rules: [{name: a, kind: klass}]", "does not match any of the expected tags: 'class'"),
    (b"rules: [{kind: class, classes: [person]}]", "rules.0.class.name: Field required"),
    (b"rules: [{name: a, kind: class}]", "rules.0.class.classes: Field required"),
    (b"rules: [{name: a, kind: class, classes: [person], colour: red}]", "colour: Extra inputs"),
    (b"rules: [{name: a, kind: dwell, zone: z, seconds: 7200}]", "less than 3600"),
    (b"rules: [{name: a, kind: silent, minutes: 0}]", "greater than 0"),
    (b"rules: [{name: a, kind: count, classes: [car], at_least: 0}]", "greater than or equal to 1"),
    (b"rules: [{name: a, kind: class, classes: [car], severity: panic}]", "'info', 'warning' or 'critical'"),
    (b"rules: [{name: a/../b, kind: class, classes: [car]}]", "a rule name is 1–64 letters"),
    (b"rules: [{name: a, kind: dark}, {name: a, kind: dark}]", "repeated: a"),
    (b"rules: [{name: a, kind: dark, notify: [ops]}]", "notifies ops, not declared under `notify:`"),
    (b"notify: {ops: {url: 'file:///etc/passwd'}}", "not an http:// or https:// address"),
    (b"notify: {ops: {url: 'http://x', token_env: 's3cr3t-token'}}", "not an environment variable name"),
    (b"notify: {ops: {url: 'http://x', attempts: 1000}}", "less than or equal to 10"),
    (b"notify: {ops: {url: 'http://x', retry_for_s: -60}}", "retry_for_s: Input should be greater than"),
    (b"notify: {ops: {url: 'http://x', retry_for_s: 864000}}", "retry_for_s: Input should be less than"),
    (b"notify: {Kafka: {url: 'http://x'}}", "names the Kafka topic's own record of each alert sent"),
    (b"notify: {chat: {url: 'http://x', format: slack, inline_snapshot: true}}", "is for `format: json`"),
    (b"notify: {chat: {url: 'http://x', format: teams}}", "Input should be 'json' or 'slack'"),
    (b"notify: {m: {to: [ops], from: a@b.c, smtp: 'mail:25'}}", "not an e-mail address: 'ops'"),
    (b"notify: {m: {to: [], from: a@b.c, smtp: 'mail:25'}}", "at least 1 item"),
    (b'notify: {m: {to: [o@b.c], from: "a@b.c\\nBcc: all@b.c", smtp: "mail:25"}}', "not an e-mail address"),
    (b"notify: {m: {to: [o@b.c], from: a@b.c, smtp: 'mail'}}", "is not host:port"),
    (b"notify: {m: {to: [o@b.c], from: a@b.c, smtp: 'mail:99999'}}", "is not host:port"),
    (b"notify: {m: {to: [o@b.c], from: a@b.c, smtp: 'mail:25', security: none, user: u, password_env: P}}",
     "would send the password in the clear"),
    (b"notify: {m: {to: [o@b.c], from: a@b.c, smtp: 'mail:587', user: u}}",
     "user and password_env go together"),
    (b"notify: {m: {to: [o@b.c], from: a@b.c, smtp: 'mail:587', user: u, password_env: hunter2}}",
     "not an environment variable name"),
    (b"notify: {m: {to: [o@b.c], smtp: 'mail:587'}}", "from: Field required"),
    (b"rules: &a [*a]", "aliases (*name) are not allowed"),
    (b"rules: []\nrules: []", "'rules' is written twice"),
    (b"- just\n- a list", "expected a mapping with `rules:`"),
    (b"rules: " + b"[" * 50 + b"]" * 50, "nested more than 8 deep"),
    (b"\xff\xfe", "not UTF-8"),
])
def test_a_bad_rules_file_says_what_to_fix(text, says):
    with pytest.raises(ConfigError) as caught:
        alert_rules.parse(text, "alerts.yaml")
    assert says in str(caught.value)
    assert str(caught.value).startswith("alerts.yaml")


def test_rules_must_name_drawn_zones_and_known_classes():
    for text, says in [
        (b"rules: [{name: a, kind: zone_enter, zone: road}]", "zone 'road' is not drawn for any source"),
        (b"rules: [{name: a, kind: line_cross, line: door, sources: [cam, other]}]",
         "line 'door' is not drawn for other"),
        (b"rules: [{name: a, kind: class, classes: [persn]}]", "the model knows no class 'persn'"),
    ]:
        with pytest.raises(ConfigError, match=says):
            alert_rules.parse(text).check_against(ZONES, COCO)
    alert_rules.parse(b"rules: [{name: a, kind: dwell, zone: bench, seconds: 30, classes: [person]}]"
                      ).check_against(ZONES, COCO)


def test_files_too_large_or_endless_are_refused(tmp_path):
    big = tmp_path / "alerts.yaml"
    big.write_bytes(b"#" * 1_000_001)
    with pytest.raises(ConfigError, match="more than 1000000 bytes"):
        alert_rules.load(big)
    with pytest.raises(ConfigError, match="more than 1000000 bytes"):
        alert_rules.load(Path("/dev/zero"))


def test_the_demo_rules_come_only_with_the_demo_zones(tmp_path, monkeypatch):
    from imgpipeline.configuration import Settings

    monkeypatch.setenv("IMGPIPELINE_HOME", str(tmp_path))
    monkeypatch.delenv("IMGPIPELINE_ALERTS_FILE", raising=False)
    monkeypatch.delenv("IMGPIPELINE_ZONES_FILE", raising=False)
    assert len(code_location_rules().rules().rules) >= 5  # the checkout's pair
    own = tmp_path / "zones.yaml"
    own.write_text("sources:\n  gate:\n    lines: [{name: door, start: [0, 0], end: [9, 9]}]\n")
    assert code_location_rules().rules().rules == []  # a site's own zones: no demo
    (tmp_path / "alerts.yaml").write_text("rules: [{name: r, kind: zone_enter, zone: road}]\n")
    with pytest.raises(ConfigError, match="zone 'road' is not drawn for any source"):
        Settings.from_env().checked().resources()  # a site's own rules are checked against its zones


def test_the_example_rules_file_of_the_docs_loads(tmp_path):
    """docs/alerts.md's example, webhooks, a chat and an e-mail included, is a rules file that loads."""
    import re

    from imgpipeline.vision.alert_rules import Email, Webhook

    text = (PACKAGE_DIR.parent / "docs" / "alerts.md").read_text()
    (tmp_path / "alerts.yaml").write_text(re.search(r"```yaml\n(notify:.*?)```", text, re.S).group(1))
    rules = alert_rules.load(tmp_path / "alerts.yaml")
    assert {name: type(target) for name, target in rules.spec.notify.items()} == {
        "ops": Webhook, "team-chat": Webhook, "night-shift": Email}
    assert rules.spec.notify["team-chat"].format == "slack" and rules.spec.notify["ops"].inline_snapshot
