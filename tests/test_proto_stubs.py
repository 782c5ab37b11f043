"""The committed stubs in appliance/v1 must be exactly what `make proto` generates."""

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("proto_generate", REPO / "proto" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_the_proto_files(tmp_path):
    written = _generator().generate(tmp_path)
    assert written, "no stubs were generated"
    for fresh in written:
        rel = fresh.relative_to(tmp_path)
        committed = REPO / rel
        assert committed.is_file(), f"{rel} is generated but not committed; run `make proto`"
        assert committed.read_bytes() == fresh.read_bytes(), f"{rel} drifted from proto/; run `make proto`"
    committed_stubs = {p.relative_to(REPO) for p in (REPO / "appliance").rglob("*_pb2*.py*")}
    assert committed_stubs == {p.relative_to(tmp_path) for p in written}


def test_every_field_and_rpc_is_commented():
    text = (REPO / "proto" / "appliance" / "v1" / "inference.proto").read_text().splitlines()
    for index, line in enumerate(text):
        stripped = line.strip()
        is_field = stripped.endswith(";") and "=" in stripped and not stripped.startswith(("syntax", "package", "//"))
        is_rpc = stripped.startswith("rpc ")
        if is_field or is_rpc:
            assert text[index - 1].strip().startswith("//"), f"line {index + 1} has no comment: {stripped}"
