"""Our gRPC message definitions against the wire: every field of every message we define
has the name, number, type, label and oneof of the same field in the descriptors that
``tritonclient.grpc`` ships (generated from Triton's grpc_service.proto and
model_config.proto). The service's messages are whole; ModelConfig's are a subset."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import descriptor_pool
from tritonclient.grpc import model_config_pb2, service_pb2

from service.grpc import schema

THEIRS = descriptor_pool.Default()
# Triton's config messages of which we define only the fields mcdrop fills in.
PARTIAL = {"ModelConfig", "ModelInput", "ModelOutput", "ModelInstanceGroup",
           "ModelDynamicBatching"}  # fmt: skip


def _ours() -> list[Any]:
    out = []
    stack = list(
        schema.POOL.FindFileByName("mcdrop/inference.proto").message_types_by_name.values()
    )
    while stack:
        d = stack.pop()
        if not d.GetOptions().map_entry:
            out.append(d)
        stack.extend(d.nested_types)
    return out


def _facts(f: Any) -> tuple[Any, ...]:
    kind = f.message_type.full_name if f.message_type else (
        f.enum_type.full_name if f.enum_type else None)  # fmt: skip
    oneof = f.containing_oneof.name if f.containing_oneof else None
    return (f.name, f.number, f.type, f.is_repeated, kind, oneof)


def test_the_clients_messages_are_registered_apart() -> None:
    assert service_pb2.DESCRIPTOR.pool is THEIRS and model_config_pb2.DESCRIPTOR.pool is THEIRS
    assert schema.POOL is not THEIRS


@pytest.mark.parametrize("ours", _ours(), ids=lambda d: d.full_name)
def test_message_fields_match_triton(ours: Any) -> None:
    theirs = THEIRS.FindMessageTypeByName(ours.full_name)
    mine = {f.name: _facts(f) for f in ours.fields}
    them = {f.name: _facts(f) for f in theirs.fields}
    if ours.name in PARTIAL:
        assert mine.items() <= them.items()
    else:
        assert mine == them
    for enum in ours.enum_types:
        other = theirs.enum_types_by_name[enum.name]
        assert [(v.name, v.number) for v in enum.values] == [
            (v.name, v.number) for v in other.values
        ]


def test_data_type_enum_and_methods_match_triton() -> None:
    ours = schema.POOL.FindEnumTypeByName("inference.DataType")
    theirs = THEIRS.FindEnumTypeByName("inference.DataType")
    assert [(v.name, v.number) for v in ours.values] == [(v.name, v.number) for v in theirs.values]
    svc = THEIRS.FindServiceByName(schema.SERVICE)
    mine = schema.POOL.FindServiceByName(schema.SERVICE)
    assert len(mine.methods) == len(schema.METHODS) + len(schema.STREAM_METHODS) == 12
    for m in mine.methods:
        other = svc.methods_by_name[m.name]
        assert (m.input_type.full_name, m.output_type.full_name) == (
            other.input_type.full_name, other.output_type.full_name)  # fmt: skip
        assert (m.client_streaming, m.server_streaming) == (
            other.client_streaming, other.server_streaming)  # fmt: skip
