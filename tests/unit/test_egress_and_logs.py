"""Egress rules: what the operator may call."""

from __future__ import annotations

import asyncio

import pytest

from controller.capabilities.egress import EgressRefused, EgressRules, http_client


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data",
        "http://[fe80::1]/",
        "http://127.0.0.1:8080/",
        "http://[::1]/",
        "http://localhost/",
        "ftp://example.com/",
        "http://0.0.0.0/",
        "http://[::ffff:169.254.169.254]/",
    ],
)
def test_refused_by_default(url: str) -> None:
    with pytest.raises(EgressRefused):
        asyncio.run(EgressRules().check_url(url))


def test_loopback_allowed_locally_but_never_the_control_plane() -> None:
    rules = EgressRules(allow_loopback=True, forbidden_endpoints=frozenset({("127.0.0.1", 6443)}))
    asyncio.run(rules.check_url("http://127.0.0.1:8080/x"))
    asyncio.run(rules.check_url("http://localhost:8080/x"))
    for url in ("https://127.0.0.1:6443/api", "https://localhost:6443/api", "https://[::1]:6443/"):
        with pytest.raises(EgressRefused, match="control plane"):
            asyncio.run(rules.check_url(url))
    with pytest.raises(EgressRefused, match="link-local"):
        asyncio.run(rules.check_url("http://169.254.169.254/"))


def test_json_log_lines_carry_the_workflow_and_step() -> None:
    import json
    import logging

    from controller.observability.logs import JsonFormatter

    record = logging.LogRecord("airun.runtime", logging.INFO, __file__, 1, "%s: %s", ("Started", "3 steps"), None)
    record.workflow, record.step = "team-a/deploy", "create_db"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "Started: 3 steps" and line["workflow"] == "team-a/deploy" and line["step"] == "create_db"
    assert line["level"] == "info" and line["time"].endswith("+00:00")


def test_connections_are_checked_when_they_are_opened() -> None:
    """The client checks the address it connects to, not only a lookup made before (DNS rebinding):
    no request hook here, yet loopback is refused unless allowed, by name and by address."""
    from tests.httpserver import LoopbackAPI

    api = LoopbackAPI()
    port = api.url.rsplit(":", 1)[1]

    async def get(rules: EgressRules, url: str) -> int:
        async with http_client(rules, timeout=5) as client:
            return (await client.get(url)).status_code

    try:
        for url in (f"http://localhost:{port}/items/none", f"http://127.0.0.1:{port}/items/none"):
            with pytest.raises(EgressRefused, match="loopback"):
                asyncio.run(get(EgressRules(), url))
        assert asyncio.run(get(EgressRules(allow_loopback=True), f"http://localhost:{port}/items/none")) == 404
        assert len([r for r in api.requests if r[0] == "GET"]) == 1  # only the allowed request arrived
    finally:
        api.close()


def test_secret_references_are_found_only_where_the_spec_wrote_them() -> None:
    from controller.capabilities.secrets import ref_paths

    ref = {"secretKeyRef": {"name": "s", "key": "k"}}
    template = {"url": "u", "headers": {"Authorization": ref, "X": "{{ steps.a.outputs.x }}"}, "list": [1, ref]}
    assert ref_paths(template) == [("headers", "Authorization"), ("list", 1)]


def test_scrubber_hides_values_and_their_encodings_deep() -> None:
    import base64
    import logging

    from controller.capabilities.secrets import Scrubber, ScrubLogFilter, scrubbing_logs

    scrub = Scrubber(["p@ss word"])
    encoded = base64.b64encode(b"p@ss word").decode()
    value = {"h": ["Bearer p@ss word", encoded, "p%40ss%20word"], "p@ss word": 1, "n": 2}
    assert scrub(value) == {"h": ["Bearer ***", "***", "***"], "***": 1, "n": 2}
    assert Scrubber([])("p@ss word") == "p@ss word"
    record = logging.LogRecord("x", logging.INFO, "f", 1, "sent %s", ("p@ss word",), None)
    with scrubbing_logs(scrub):
        ScrubLogFilter().filter(record)
    assert record.getMessage() == "sent ***"


@pytest.mark.parametrize(
    "address",
    [
        "fd00:ec2::254",  # AWS metadata, IPv6
        "100.100.100.200",  # Alibaba Cloud metadata
        "::ffff:100.100.100.200",  # IPv4-mapped
        "::100.100.100.200",  # IPv4-compatible
        "64:ff9b::100.100.100.200",  # NAT64
        "2002:6464:64c8::1",  # 6to4 of 100.100.100.200
        "169.254.169.254",
        "::ffff:169.254.169.254",
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "168.63.129.16",  # Azure WireServer
        "fe80::1%1",
    ],
)
def test_metadata_addresses_are_refused_in_every_form(address: str) -> None:
    with pytest.raises(EgressRefused):
        EgressRules(allow_loopback=True).check_address(address, 80)


def test_metadata_names_are_refused_before_resolving() -> None:
    with pytest.raises(EgressRefused, match="metadata"):
        asyncio.run(EgressRules().check_url("http://metadata.google.internal/computeMetadata/v1/"))


def test_the_api_servers_learned_addresses_are_refused_on_every_port() -> None:
    from controller.capabilities.egress import ControlPlaneAddresses
    from controller.operator.controlplane import endpoints_of_endpoints, endpoints_of_slice

    learned = ControlPlaneAddresses()
    slice_ = {"endpoints": [{"addresses": ["10.0.0.5", "fd12::5"]}], "ports": [{"name": "https", "port": 6443}]}
    legacy = {"subsets": [{"addresses": [{"ip": "10.0.0.6"}], "ports": [{"port": 443}]}]}
    learned.replace(endpoints_of_slice(slice_) | endpoints_of_endpoints(legacy) | {("127.0.0.1", 7000)})
    rules = EgressRules(allow_loopback=True, control_plane=learned)
    for address in ("10.0.0.5", "::ffff:10.0.0.5", "fd12::5", "10.0.0.6", "64:ff9b::a00:6"):
        for port in (443, 6443, 10250, 2379):
            with pytest.raises(EgressRefused, match="control plane"):
                rules.check_address(address, port)
    rules.check_address("10.0.0.7", 6443)  # another host
    with pytest.raises(EgressRefused, match="control plane"):
        rules.check_address("127.0.0.1", 7000)  # a local API server: its port only
    rules.check_address("127.0.0.1", 7001)
