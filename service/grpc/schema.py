"""The protobuf messages of ``inference.GRPCInferenceService``, built at import time.

The definitions below are our own, written from the Open Inference Protocol's gRPC
specification (KServe's ``grpc_predict_v2.proto``) and Triton's ``grpc_service.proto`` and
``model_config.proto``: the package, message and field names and the field numbers are the
wire format, so they must be exactly theirs (``tests/service/test_grpc_schema.py`` checks
every field against the descriptors that ``tritonclient.grpc`` ships). ``ModelConfig`` is
the part of Triton's that describes what mcdrop serves; a client's parser skips nothing
it needs, and fields we never send cost nothing.

The messages live in a private :class:`~google.protobuf.descriptor_pool.DescriptorPool`,
not the default one: ``tritonclient.grpc`` and KServe register the same full names
(``inference.ModelInferRequest``, ...) in the default pool, and a test process (or an
application) that imports one of them and runs this server must not get "duplicate
symbol". No generated code and no ``grpcio-tools``: each message is a few lines of the
same ``[repeated] type name = number`` notation as a ``.proto`` file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["PACKAGE", "SERVICE", "POOL", "message_class", "METHODS", "STREAM_METHODS"]

PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"
_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "bool": _F.TYPE_BOOL,
    "int32": _F.TYPE_INT32,
    "int64": _F.TYPE_INT64,
    "uint32": _F.TYPE_UINT32,
    "uint64": _F.TYPE_UINT64,
    "float": _F.TYPE_FLOAT,
    "double": _F.TYPE_DOUBLE,
    "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
}


@dataclass(frozen=True)
class _Msg:
    name: str
    fields: tuple[str, ...]
    nested: tuple[_Msg, ...] = ()
    enums: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (name, values numbered from 0)


def _m(name: str, *fields: str, nested: tuple[_Msg, ...] = (), enums: Any = ()) -> _Msg:
    return _Msg(name, fields, nested, tuple(enums))


_PARAMS = "map<string, InferParameter> parameters"
_DURATION = "StatisticDuration"

# ---------------------------------------------------------------- grpc_service.proto

_SERVICE_MESSAGES = (
    _m("ServerLiveRequest"),
    _m("ServerLiveResponse", "bool live = 1"),
    _m("ServerReadyRequest"),
    _m("ServerReadyResponse", "bool ready = 1"),
    _m("ModelReadyRequest", "string name = 1", "string version = 2"),
    _m("ModelReadyResponse", "bool ready = 1"),
    _m("ServerMetadataRequest"),
    _m("ServerMetadataResponse", "string name = 1", "string version = 2",
       "repeated string extensions = 3"),
    _m("ModelMetadataRequest", "string name = 1", "string version = 2"),
    _m("ModelMetadataResponse", "string name = 1", "repeated string versions = 2",
       "string platform = 3", "repeated TensorMetadata inputs = 4",
       "repeated TensorMetadata outputs = 5",
       nested=(_m("TensorMetadata", "string name = 1", "string datatype = 2",
                  "repeated int64 shape = 3"),)),
    _m("InferParameter", "oneof parameter_choice: bool bool_param = 1",
       "oneof parameter_choice: int64 int64_param = 2",
       "oneof parameter_choice: string string_param = 3",
       "oneof parameter_choice: double double_param = 4",
       "oneof parameter_choice: uint64 uint64_param = 5"),
    _m("InferTensorContents", "repeated bool bool_contents = 1",
       "repeated int32 int_contents = 2", "repeated int64 int64_contents = 3",
       "repeated uint32 uint_contents = 4", "repeated uint64 uint64_contents = 5",
       "repeated float fp32_contents = 6", "repeated double fp64_contents = 7",
       "repeated bytes bytes_contents = 8"),
    _m("ModelInferRequest", "string model_name = 1", "string model_version = 2",
       "string id = 3", f"{_PARAMS} = 4", "repeated InferInputTensor inputs = 5",
       "repeated InferRequestedOutputTensor outputs = 6",
       "repeated bytes raw_input_contents = 7",
       nested=(_m("InferInputTensor", "string name = 1", "string datatype = 2",
                  "repeated int64 shape = 3", f"{_PARAMS} = 4",
                  "InferTensorContents contents = 5"),
               _m("InferRequestedOutputTensor", "string name = 1", f"{_PARAMS} = 2"))),
    _m("ModelInferResponse", "string model_name = 1", "string model_version = 2",
       "string id = 3", f"{_PARAMS} = 4", "repeated InferOutputTensor outputs = 5",
       "repeated bytes raw_output_contents = 6",
       nested=(_m("InferOutputTensor", "string name = 1", "string datatype = 2",
                  "repeated int64 shape = 3", f"{_PARAMS} = 4",
                  "InferTensorContents contents = 5"),)),
    _m("ModelStreamInferResponse", "string error_message = 1",
       "ModelInferResponse infer_response = 2"),
    _m("ModelConfigRequest", "string name = 1", "string version = 2"),
    _m("ModelConfigResponse", "ModelConfig config = 1"),
    _m("ModelStatisticsRequest", "string name = 1", "string version = 2"),
    _m("StatisticDuration", "uint64 count = 1", "uint64 ns = 2"),
    _m("InferStatistics", *(f"{_DURATION} {n} = {i}" for i, n in enumerate(
        ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
         "cache_hit", "cache_miss"), start=1))),
    _m("InferResponseStatistics", *(f"{_DURATION} {n} = {i}" for i, n in enumerate(
        ("compute_infer", "compute_output", "success", "fail", "empty_response", "cancel"),
        start=1))),
    _m("InferBatchStatistics", "uint64 batch_size = 1", f"{_DURATION} compute_input = 2",
       f"{_DURATION} compute_infer = 3", f"{_DURATION} compute_output = 4"),
    _m("MemoryUsage", "string type = 1", "int64 id = 2", "uint64 byte_size = 3"),
    _m("ModelStatistics", "string name = 1", "string version = 2",
       "uint64 last_inference = 3", "uint64 inference_count = 4",
       "uint64 execution_count = 5", "InferStatistics inference_stats = 6",
       "repeated InferBatchStatistics batch_stats = 7",
       "repeated MemoryUsage memory_usage = 8",
       "map<string, InferResponseStatistics> response_stats = 9"),
    _m("ModelStatisticsResponse", "repeated ModelStatistics model_stats = 1"),
    _m("ModelRepositoryParameter", "oneof parameter_choice: bool bool_param = 1",
       "oneof parameter_choice: int64 int64_param = 2",
       "oneof parameter_choice: string string_param = 3",
       "oneof parameter_choice: bytes bytes_param = 4"),
    _m("RepositoryIndexRequest", "string repository_name = 1", "bool ready = 2"),
    _m("RepositoryIndexResponse", "repeated ModelIndex models = 1",
       nested=(_m("ModelIndex", "string name = 1", "string version = 2", "string state = 3",
                  "string reason = 4"),)),
    _m("RepositoryModelLoadRequest", "string repository_name = 1", "string model_name = 2",
       "map<string, ModelRepositoryParameter> parameters = 3"),
    _m("RepositoryModelLoadResponse"),
    _m("RepositoryModelUnloadRequest", "string repository_name = 1",
       "string model_name = 2", "map<string, ModelRepositoryParameter> parameters = 3"),
    _m("RepositoryModelUnloadResponse"),
)  # fmt: skip

# ---------------------------------------------------------------- model_config.proto

_DATA_TYPES = ("TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32",
               "TYPE_UINT64", "TYPE_INT8", "TYPE_INT16", "TYPE_INT32", "TYPE_INT64",
               "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_STRING", "TYPE_BF16")  # fmt: skip

_CONFIG_MESSAGES = (
    _m("ModelTensorReshape", "repeated int64 shape = 1"),
    _m("ModelInput", "string name = 1", "DataType data_type = 2", "Format format = 3",
       "repeated int64 dims = 4", "ModelTensorReshape reshape = 5",
       "bool is_shape_tensor = 6", "bool allow_ragged_batch = 7", "bool optional = 8",
       enums=[("Format", ("FORMAT_NONE", "FORMAT_NHWC", "FORMAT_NCHW"))]),
    _m("ModelOutput", "string name = 1", "DataType data_type = 2", "repeated int64 dims = 3",
       "ModelTensorReshape reshape = 5", "string label_filename = 4",
       "bool is_shape_tensor = 6"),
    _m("ModelVersionPolicy", "oneof policy_choice: Latest latest = 1",
       "oneof policy_choice: All all = 2", "oneof policy_choice: Specific specific = 3",
       nested=(_m("Latest", "uint32 num_versions = 1"), _m("All"),
               _m("Specific", "repeated int64 versions = 1"))),
    _m("ModelInstanceGroup", "string name = 1", "Kind kind = 4", "int32 count = 2",
       "repeated int32 gpus = 3", "repeated string profile = 5", "bool passive = 7",
       "string host_policy = 9",
       enums=[("Kind", ("KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"))]),
    _m("ModelDynamicBatching", "repeated int32 preferred_batch_size = 1",
       "uint64 max_queue_delay_microseconds = 2", "bool preserve_ordering = 3",
       "uint64 priority_levels = 4", "uint64 default_priority_level = 5"),
    _m("ModelParameter", "string string_value = 1"),
    _m("ModelConfig", "string name = 1", "string platform = 2", "string backend = 17",
       "string runtime = 25", "ModelVersionPolicy version_policy = 3",
       "int32 max_batch_size = 4", "repeated ModelInput input = 5",
       "repeated ModelOutput output = 6",
       "oneof scheduling_choice: ModelDynamicBatching dynamic_batching = 11",
       "repeated ModelInstanceGroup instance_group = 7",
       "string default_model_filename = 8", "map<string, ModelParameter> parameters = 14"),
)  # fmt: skip

# (method, request message, response message): unary-unary; STREAM_METHODS: both ways
METHODS: tuple[tuple[str, str, str], ...] = tuple(
    (m, f"{m}Request", f"{m}Response")
    for m in ("ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
              "ModelInfer", "ModelConfig", "ModelStatistics", "RepositoryIndex")
) + (
    ("RepositoryModelLoad", "RepositoryModelLoadRequest", "RepositoryModelLoadResponse"),
    ("RepositoryModelUnload", "RepositoryModelUnloadRequest", "RepositoryModelUnloadResponse"),
)  # fmt: skip
STREAM_METHODS = (("ModelStreamInfer", "ModelInferRequest", "ModelStreamInferResponse"),)


# ---------------------------------------------------------------- building


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _field(d: descriptor_pb2.DescriptorProto, line: str, oneofs: dict[str, int]) -> None:
    """Add the field that ``line`` (``[oneof G:] [repeated] type name = n``) declares."""
    f = d.field.add()
    if line.startswith("oneof "):
        head, line = line.split(":", 1)
        group = head.split()[1]
        if group not in oneofs:
            oneofs[group] = len(d.oneof_decl)
            d.oneof_decl.add(name=group)
        f.oneof_index = oneofs[group]
    spec, number = line.rsplit("=", 1)
    words = spec.replace(", ", ",").split()
    f.number = int(number)
    f.name = words[-1]
    repeated = words[0] == "repeated" or words[0].startswith("map<")  # a map is repeated entries
    f.label = _F.LABEL_REPEATED if repeated else _F.LABEL_OPTIONAL  # type: ignore[assignment]
    type_name = words[-2]
    if type_name.startswith("map<"):
        key, value = type_name[4:-1].split(",")
        entry = d.nested_type.add(name=_camel(f.name) + "Entry")
        entry.options.map_entry = True
        _field(entry, f"{key} key = 1", {})
        _field(entry, f"{value} value = 2", {})
        type_name = entry.name
    if type_name in _SCALARS:
        f.type = _SCALARS[type_name]  # type: ignore[assignment]
    else:
        f.type_name = type_name  # a message or enum, resolved by the pool in scope


def _message(m: _Msg) -> descriptor_pb2.DescriptorProto:
    d = descriptor_pb2.DescriptorProto(name=m.name)
    oneofs: dict[str, int] = {}
    for line in m.fields:
        _field(d, line, oneofs)
    for n in m.nested:
        d.nested_type.append(_message(n))
    for name, values in m.enums:
        e = d.enum_type.add(name=name)
        for i, v in enumerate(values):
            e.value.add(name=v, number=i)
    return d


def _file() -> descriptor_pb2.FileDescriptorProto:
    fd = descriptor_pb2.FileDescriptorProto(
        name="mcdrop/inference.proto", package=PACKAGE, syntax="proto3"
    )
    e = fd.enum_type.add(name="DataType")
    for i, v in enumerate(_DATA_TYPES):
        e.value.add(name=v, number=i)
    for m in (*_CONFIG_MESSAGES, *_SERVICE_MESSAGES):
        fd.message_type.append(_message(m))
    svc = fd.service.add(name=SERVICE.rsplit(".", 1)[1])
    for name, req, resp in (*METHODS, *STREAM_METHODS):
        streams = (name, req, resp) in STREAM_METHODS
        svc.method.add(name=name, input_type=f".{PACKAGE}.{req}", output_type=f".{PACKAGE}.{resp}",
                       client_streaming=streams, server_streaming=streams)  # fmt: skip
    return fd


POOL = descriptor_pool.DescriptorPool()
POOL.Add(_file())


def message_class(name: str) -> Any:
    """The message class of ``inference.<name>`` (``name`` may be nested: ``A.B``)."""
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))
