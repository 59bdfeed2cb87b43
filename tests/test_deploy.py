"""The docker-compose file for a scaled-out deployment: well-formed, self-consistent, and using only
vitrine flags that exist (docker compose itself is not available where the tests run)."""

import re
import shlex
from pathlib import Path

import yaml
from typer.testing import CliRunner

from vitrine.cli import app

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_services_are_complete_and_refer_to_each_other():
    spec = compose()
    services = spec["services"]
    assert {"etcd", "minio", "pulsar", "proxy", "querynode", "ray-head", "ray-worker", "vitrine", "balancer"} <= set(services)
    volumes = set(spec["volumes"])
    for name, service in services.items():
        assert "image" in service or "build" in service, f"{name} has neither image nor build"
        for needed in service.get("depends_on", []):
            assert needed in services, f"{name} depends on unknown service {needed}"
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            assert source.startswith(".") or source in volumes, f"{name} mounts undeclared volume {source}"
            if source.startswith("."):
                assert (DEPLOY / source).is_file(), f"{name} mounts missing file {source}"
        for port in service.get("ports", []):
            assert re.fullmatch(r"\d+:\d+", port), f"{name}: port {port!r}"
    assert services["vitrine"]["deploy"]["replicas"] >= 2
    assert (DEPLOY / services["vitrine"]["build"]["dockerfile"].removeprefix("deploy/")).is_file()


def test_vitrine_commands_use_real_flags():
    runner = CliRunner()
    for name in ("indexer", "vitrine"):
        argv = shlex.split(compose()["services"][name]["command"])
        assert argv[0] == "vitrine"
        help_text = runner.invoke(app, [argv[1], "--help"], terminal_width=200).output
        for flag in (arg.split("=")[0] for arg in argv[2:] if arg.startswith("--")):
            assert flag in help_text, f"{name}: 'vitrine {argv[1]}' has no {flag}"
