"""docker-compose.yml and the Dockerfile agree with the documented defaults.

No container engine runs here, so the compose path (`docker compose up -d postgres redis`, then
`make demo` with no DATABASE_URL or REDIS_URL set) is checked by reading the files: every
setting a service carries must be the one Relay assumes when nothing is configured.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from relay.cli.main import build_parser
from relay.settings import DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL, Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _published(service: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """container port -> (host address, host port) of `ports: ["127.0.0.1:5432:5432"]`."""
    found: dict[int, tuple[str, int]] = {}
    for entry in service.get("ports", []):
        host, host_port, container = str(entry).rsplit(":", 2)
        found[int(container)] = (host, int(host_port))
    return found


def _subcommand_default(name: str, option: str) -> Any:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name].get_default(option)


def test_postgres_matches_the_default_database_url(compose: dict[str, Any]) -> None:
    pg = compose["services"]["postgres"]
    env = pg["environment"]
    url = urlsplit(DEFAULT_DATABASE_URL)
    # The default URL has no password: the development Postgres must not demand one.
    assert url.password is None
    assert env.get("POSTGRES_HOST_AUTH_METHOD") == "trust"
    assert "POSTGRES_PASSWORD" not in env
    assert env.get("POSTGRES_USER", "postgres") == url.username
    assert env["POSTGRES_DB"] == url.path.lstrip("/")
    assert _published(pg)[5432] == (url.hostname, url.port)
    assert pg["healthcheck"]["test"][-1] == url.username  # pg_isready -U <the default user>


def test_redis_matches_the_default_redis_url(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    url = urlsplit(DEFAULT_REDIS_URL)
    assert _published(redis)[6379] == (url.hostname, url.port)
    assert "command" not in redis  # no password or other port configured inside


def test_relay_services_reach_the_stores_as_the_defaults_do(compose: dict[str, Any]) -> None:
    """Inside the compose network only the host differs (the service name) from the defaults."""
    default_db, default_redis = urlsplit(DEFAULT_DATABASE_URL), urlsplit(DEFAULT_REDIS_URL)
    relay_services = {name: s for name, s in compose["services"].items() if s.get("build") == "."}
    assert set(relay_services) == {"migrate", "api", "worker", "sandbox"}
    for name, service in relay_services.items():
        env = service["environment"]
        db, redis = urlsplit(env["DATABASE_URL"]), urlsplit(env["REDIS_URL"])
        assert (db.scheme, db.username, db.password, db.port, db.path) == (
            default_db.scheme,
            default_db.username,
            default_db.password,
            default_db.port,
            default_db.path,
        ), name
        assert db.hostname == "postgres", name
        assert (redis.scheme, redis.port, redis.path) == (
            default_redis.scheme,
            default_redis.port,
            default_redis.path,
        ), name
        assert redis.hostname == "redis", name
        # Settings parse what compose passes (the secret key comes from the caller's shell).
        parsed = Settings.from_env({k: str(v) for k, v in env.items() if "${" not in str(v)})
        assert parsed.database_url == env["DATABASE_URL"]


def test_published_relay_ports_match_the_command_defaults(compose: dict[str, Any]) -> None:
    services = compose["services"]
    api_port = _subcommand_default("api", "port")
    sandbox_port = _subcommand_default("sandbox", "port")
    assert _published(services["api"])[api_port] == ("127.0.0.1", api_port)
    assert services["api"]["command"][-1] == str(api_port)
    assert urlsplit(Settings().api_url).port == api_port  # where the CLI looks for the API
    assert _published(services["sandbox"])[sandbox_port] == ("127.0.0.1", sandbox_port)
    assert services["sandbox"]["command"][-1] == str(sandbox_port)
    assert services["migrate"]["command"] == ["migrate"]
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }


def test_dockerfile_ships_what_migrate_and_the_commands_need() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = " ".join(re.findall(r"^COPY (.+) \S+$", dockerfile, flags=re.MULTILINE))
    for needed in ("pyproject.toml", "schema.sql", "relay", "workers"):
        assert needed in copied.split(), needed
    assert re.search(r'^ENTRYPOINT \["relay"\]$', dockerfile, flags=re.MULTILINE)
    python = re.search(r"^FROM python:(\d+)\.(\d+)", dockerfile, flags=re.MULTILINE)
    assert python is not None
    assert (int(python[1]), int(python[2])) >= (3, 11)


def test_readme_documents_the_compose_path() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "docker compose up -d postgres redis" in readme
    assert DEFAULT_DATABASE_URL in readme
    assert DEFAULT_REDIS_URL in readme
