"""Real responses match provider/api-schema.json, and the daemon serves exactly its methods."""

import json

from provider_util import ROOT

SCHEMA = json.loads((ROOT / "provider/api-schema.json").read_text())


def validate(schema, v, path="$"):
    """The subset of JSON Schema that api-schema.json uses."""
    if schema is True:
        return
    assert schema is not False, f"{path}: not allowed"
    if "$ref" in schema:
        node = SCHEMA
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        validate(node, v, path)
    for s in schema.get("allOf", []):
        validate(s, v, path)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        checks = {"object": lambda x: isinstance(x, dict), "array": lambda x: isinstance(x, list),
                  "string": lambda x: isinstance(x, str), "boolean": lambda x: isinstance(x, bool),
                  "integer": lambda x: isinstance(x, int) and not isinstance(x, bool),
                  "null": lambda x: x is None}
        assert any(checks[t](v) for t in types), f"{path}: {v!r} is not {types}"
    if "const" in schema:
        assert v == schema["const"], f"{path}: {v!r} != {schema['const']!r}"
    if "enum" in schema:
        assert v in schema["enum"], f"{path}: {v!r} not in {schema['enum']}"
    if isinstance(v, dict):
        for r in schema.get("required", []):
            assert r in v, f"{path}: missing {r}"
        props = schema.get("properties", {})
        for k, x in v.items():
            if k in props:
                validate(props[k], x, f"{path}.{k}")
            else:
                assert schema.get("additionalProperties", True) is not False, f"{path}: unexpected {k}"
    if isinstance(v, list) and "items" in schema:
        for i, x in enumerate(v):
            validate(schema["items"], x, f"{path}[{i}]")


def check(method, params, result):
    spec = SCHEMA["methods"][method]
    validate(spec["params"], params, f"{method} params")
    validate(spec["result"], result, f"{method} result")


def test_served_methods_are_the_schema_methods(daemon):
    info = daemon.call("provider.info")
    check("provider.info", {}, info)
    assert sorted(info["methods"]) == sorted(SCHEMA["methods"])


def test_responses_match_schema(daemon, make_box, box_server):
    from provider_util import build_box
    build_box(box_server.root / "s.zip", "zip")
    params = {"source": box_server.url("s.zip"), "name": "acme/s", "version": "1.0"}
    resp, notes = daemon.call_full("box.add", params)
    check("box.add", params, resp["result"])
    assert {n["params"]["phase"] for n in notes} >= {"download", "unpack", "install"}
    for n in notes:
        assert n["jsonrpc"] == "2.0" and "id" not in n
        validate(SCHEMA["notifications"][n["method"]]["params"], n["params"], n["method"])
    params = {"source": str(make_box("tar")), "name": "t", "architecture": "arm64"}
    check("box.add", params, daemon.call("box.add", params))
    check("box.list", {}, daemon.call("box.list"))
    assert len(daemon.call("box.list")) == 2
    params = {"name": "acme/s", "version": "1.0.0"}
    check("box.remove", params, daemon.call("box.remove", params))


def test_network_responses_match_schema(daemon):
    for params in ({"name": "n1"}, {"name": "n2", "subnet": "10.5.0.0/24", "dhcp": False},
                   {"name": "n3", "subnet": "10.6.0.0/24", "dhcp": {"start": "10.6.0.10", "end": "10.6.0.20"}}):
        check("network.create", params, daemon.call("network.create", params))
    listed = daemon.call("network.list")
    check("network.list", {}, listed)
    assert [n["name"] for n in listed] == ["n1", "n2", "n3"] and listed[1]["dhcp"] is None, listed
    check("network.remove", {"name": "n2"}, daemon.call("network.remove", {"name": "n2"}))
