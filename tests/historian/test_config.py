"""The [historian] section: defaults, paths relative to the site file, and every mistake
reported with its field, through the plugin's validation hook."""

from __future__ import annotations

from pathlib import Path

import pytest

from openprepay.core.app.plugins import Plugins
from openprepay.core.config.site import parse_site
from openprepay.core.errors import ConfigError
from openprepay.historian.config import Api, Backend, DropPolicy, check_config, read_config


def site(section: dict | None, path: Path | None = Path("/srv/site/site.toml")):
    data = {
        "site": {"id": "s"},
        "links": {"gw": {"type": "rtu_over_tcp", "host": "h", "port": 1}},
    }
    if section is not None:
        data["historian"] = section
    return parse_site(data, path=path)


def errors(section: dict, path: Path | None = Path("/srv/site/site.toml")) -> list[str]:
    return [str(e) for e in check_config(site(section, path))[1]]


def test_defaults_to_the_embedded_store_next_to_the_site_file() -> None:
    config = read_config(site(None))
    assert config.backend is Backend.EMBEDDED
    assert config.path == Path("/srv/site/history.sqlite")


def test_influxdb_settings() -> None:
    config = read_config(
        site(
            {
                "url": "http://influx:8086/",
                "bucket": "meters",
                "token": "t",
                "spool_dir": "spool",
                "spool_max_mb": 64,
                "drop_policy": "drop_newest",
                "batch_size": 2000,
                "flush_interval_ms": 500,
            }
        )
    )
    assert config.backend is Backend.INFLUXDB  # implied by url
    assert config.influx is not None and config.influx.api is Api.V2
    assert config.influx.url == "http://influx:8086" and config.influx.read_db == "meters"
    assert config.spool_dir == Path("/srv/site/spool")
    assert config.spool_max_bytes == 64 * 1024 * 1024
    assert config.drop_policy is DropPolicy.DROP_NEWEST
    assert (config.batch_size, config.flush_interval_s) == (2000, 0.5)

    v1 = read_config(site({"url": "http://old:8086", "api": "v1", "db": "m", "rp": "year"}))
    assert v1.influx is not None and (v1.influx.read_db, v1.influx.read_rp) == ("m", "year")
    compat = read_config(site({"url": "http://x:8086", "bucket": "m/autogen"}))
    assert compat.influx is not None and (compat.influx.read_db, compat.influx.read_rp) == (
        "m",
        "autogen",
    )


def test_mistakes_name_their_field() -> None:
    assert errors({"url": "influx:8086", "bucket": "b"}) == [
        "historian.url: expected an http:// or https:// URL, got 'influx:8086'"
    ]
    assert errors({"url": "http://x", "api": "v1"}) == [
        'historian.db: missing (required with api = "v1")'
    ]
    assert errors({"url": "http://x"}) == [
        'historian.bucket: missing (required with api = "v2"; "db/rp" on InfluxDB 1.8)'
    ]
    assert errors({"backend": "influxdb", "bucket": "b"}) == [
        "historian.url: missing (required with backend = influxdb)"
    ]
    assert errors({"url": "http://x", "bucket": "b", "drop_policy": "block"}) == [
        "historian.drop_policy: expected one of drop_oldest, drop_newest; got 'block'"
    ]
    assert errors({"url": "http://x", "bucket": "b", "batch_size": 0}) == [
        "historian.batch_size: expected 1..1000000, got 0"
    ]
    assert errors({"backend": "embedded", "url": "http://x"}) == [
        "historian.url: is only used with backend = influxdb (backend is embedded)"
    ]
    assert errors({"url": "http://x", "bucket": "b", "flush_ms": 5})[0].startswith(
        "historian.flush_ms: unknown key"
    )
    assert errors({"url": "http://x", "bucket": "b", "token_env": "NOPE_NOT_SET"}) == [
        "historian.token_env: environment variable NOPE_NOT_SET is not set"
    ]
    assert errors({"url": "http://x", "bucket": "b"}, path=None) == [
        "historian.spool_dir: a relative path needs a site file to be relative to;"
        " give an absolute path"
    ]


def test_the_plugin_validates_the_section() -> None:
    plugins = Plugins.load()
    with pytest.raises(ConfigError) as info:
        plugins.validate_site(site({"url": "http://x", "bucket": "b", "gzip": "yes"}))
    assert [str(e) for e in info.value.errors] == [
        "historian.gzip: expected true or false, got 'yes'"
    ]
