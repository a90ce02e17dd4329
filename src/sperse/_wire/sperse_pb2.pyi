from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClientMessage(_message.Message):
    __slots__ = ("hello", "blob", "submit", "cancel", "fetch", "release", "stats", "goodbye", "objects", "callback", "logs")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    SUBMIT_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    FETCH_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    GOODBYE_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    CALLBACK_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    blob: Blob
    submit: Submit
    cancel: Cancel
    fetch: Fetch
    release: Release
    stats: StatsRequest
    goodbye: Goodbye
    objects: ObjectsRequest
    callback: CallbackCall
    logs: LogsRequest
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., blob: _Optional[_Union[Blob, _Mapping]] = ..., submit: _Optional[_Union[Submit, _Mapping]] = ..., cancel: _Optional[_Union[Cancel, _Mapping]] = ..., fetch: _Optional[_Union[Fetch, _Mapping]] = ..., release: _Optional[_Union[Release, _Mapping]] = ..., stats: _Optional[_Union[StatsRequest, _Mapping]] = ..., goodbye: _Optional[_Union[Goodbye, _Mapping]] = ..., objects: _Optional[_Union[ObjectsRequest, _Mapping]] = ..., callback: _Optional[_Union[CallbackCall, _Mapping]] = ..., logs: _Optional[_Union[LogsRequest, _Mapping]] = ...) -> None: ...

class LogsRequest(_message.Message):
    __slots__ = ("request_id", "task")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    task: str
    def __init__(self, request_id: _Optional[int] = ..., task: _Optional[str] = ...) -> None: ...

class CallbackCall(_message.Message):
    __slots__ = ("request_id", "session_id", "callback_id", "args")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CALLBACK_ID_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    session_id: str
    callback_id: str
    args: Pickled
    def __init__(self, request_id: _Optional[int] = ..., session_id: _Optional[str] = ..., callback_id: _Optional[str] = ..., args: _Optional[_Union[Pickled, _Mapping]] = ...) -> None: ...

class ObjectsRequest(_message.Message):
    __slots__ = ("request_id", "name")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    name: str
    def __init__(self, request_id: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("token", "protocol", "client_version", "python_version", "session_id", "client_name", "shm_probe", "shm_nonce")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    CLIENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    SHM_PROBE_FIELD_NUMBER: _ClassVar[int]
    SHM_NONCE_FIELD_NUMBER: _ClassVar[int]
    token: str
    protocol: str
    client_version: str
    python_version: str
    session_id: str
    client_name: str
    shm_probe: str
    shm_nonce: bytes
    def __init__(self, token: _Optional[str] = ..., protocol: _Optional[str] = ..., client_version: _Optional[str] = ..., python_version: _Optional[str] = ..., session_id: _Optional[str] = ..., client_name: _Optional[str] = ..., shm_probe: _Optional[str] = ..., shm_nonce: _Optional[bytes] = ...) -> None: ...

class Bytes(_message.Message):
    __slots__ = ("data", "blob_id", "shm")
    DATA_FIELD_NUMBER: _ClassVar[int]
    BLOB_ID_FIELD_NUMBER: _ClassVar[int]
    SHM_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    blob_id: int
    shm: str
    def __init__(self, data: _Optional[bytes] = ..., blob_id: _Optional[int] = ..., shm: _Optional[str] = ...) -> None: ...

class Blob(_message.Message):
    __slots__ = ("blob_id", "data", "last", "size")
    BLOB_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    LAST_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    blob_id: int
    data: bytes
    last: bool
    size: int
    def __init__(self, blob_id: _Optional[int] = ..., data: _Optional[bytes] = ..., last: _Optional[bool] = ..., size: _Optional[int] = ...) -> None: ...

class Pickled(_message.Message):
    __slots__ = ("data", "buffers")
    DATA_FIELD_NUMBER: _ClassVar[int]
    BUFFERS_FIELD_NUMBER: _ClassVar[int]
    data: Bytes
    buffers: _containers.RepeatedCompositeFieldContainer[Bytes]
    def __init__(self, data: _Optional[_Union[Bytes, _Mapping]] = ..., buffers: _Optional[_Iterable[_Union[Bytes, _Mapping]]] = ...) -> None: ...

class Task(_message.Message):
    __slots__ = ("task_id", "work", "refs", "retries", "inline_limit", "label", "peer_refs", "object", "pip", "put")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    WORK_FIELD_NUMBER: _ClassVar[int]
    REFS_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    INLINE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    PEER_REFS_FIELD_NUMBER: _ClassVar[int]
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    PIP_FIELD_NUMBER: _ClassVar[int]
    PUT_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    work: Pickled
    refs: _containers.RepeatedScalarFieldContainer[str]
    retries: int
    inline_limit: int
    label: str
    peer_refs: _containers.RepeatedCompositeFieldContainer[PeerRef]
    object: ObjectOp
    pip: _containers.RepeatedScalarFieldContainer[str]
    put: Put
    def __init__(self, task_id: _Optional[str] = ..., work: _Optional[_Union[Pickled, _Mapping]] = ..., refs: _Optional[_Iterable[str]] = ..., retries: _Optional[int] = ..., inline_limit: _Optional[int] = ..., label: _Optional[str] = ..., peer_refs: _Optional[_Iterable[_Union[PeerRef, _Mapping]]] = ..., object: _Optional[_Union[ObjectOp, _Mapping]] = ..., pip: _Optional[_Iterable[str]] = ..., put: _Optional[_Union[Put, _Mapping]] = ...) -> None: ...

class Put(_message.Message):
    __slots__ = ("type_name", "repr")
    TYPE_NAME_FIELD_NUMBER: _ClassVar[int]
    REPR_FIELD_NUMBER: _ClassVar[int]
    type_name: str
    repr: str
    def __init__(self, type_name: _Optional[str] = ..., repr: _Optional[str] = ...) -> None: ...

class ObjectOp(_message.Message):
    __slots__ = ("object_id", "kind", "name", "max_concurrency", "restart", "type_name", "methods")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    TYPE_NAME_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    object_id: str
    kind: str
    name: str
    max_concurrency: int
    restart: bool
    type_name: str
    methods: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, object_id: _Optional[str] = ..., kind: _Optional[str] = ..., name: _Optional[str] = ..., max_concurrency: _Optional[int] = ..., restart: _Optional[bool] = ..., type_name: _Optional[str] = ..., methods: _Optional[_Iterable[str]] = ...) -> None: ...

class PeerRef(_message.Message):
    __slots__ = ("object_id", "server", "address")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    object_id: str
    server: str
    address: str
    def __init__(self, object_id: _Optional[str] = ..., server: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class Submit(_message.Message):
    __slots__ = ("tasks",)
    TASKS_FIELD_NUMBER: _ClassVar[int]
    tasks: _containers.RepeatedCompositeFieldContainer[Task]
    def __init__(self, tasks: _Optional[_Iterable[_Union[Task, _Mapping]]] = ...) -> None: ...

class Cancel(_message.Message):
    __slots__ = ("task_ids",)
    TASK_IDS_FIELD_NUMBER: _ClassVar[int]
    task_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, task_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Fetch(_message.Message):
    __slots__ = ("request_id", "object_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    object_id: str
    def __init__(self, request_id: _Optional[int] = ..., object_id: _Optional[str] = ...) -> None: ...

class Release(_message.Message):
    __slots__ = ("object_ids",)
    OBJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    object_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, object_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    def __init__(self, request_id: _Optional[int] = ...) -> None: ...

class Goodbye(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("welcome", "blob", "events", "fetch_reply", "stats", "error", "objects", "callback_reply", "callback", "logs")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    BLOB_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    FETCH_REPLY_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    CALLBACK_REPLY_FIELD_NUMBER: _ClassVar[int]
    CALLBACK_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    blob: Blob
    events: Events
    fetch_reply: FetchReply
    stats: StatsReply
    error: Error
    objects: ObjectsReply
    callback_reply: CallbackReply
    callback: Callback
    logs: LogsReply
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., blob: _Optional[_Union[Blob, _Mapping]] = ..., events: _Optional[_Union[Events, _Mapping]] = ..., fetch_reply: _Optional[_Union[FetchReply, _Mapping]] = ..., stats: _Optional[_Union[StatsReply, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., objects: _Optional[_Union[ObjectsReply, _Mapping]] = ..., callback_reply: _Optional[_Union[CallbackReply, _Mapping]] = ..., callback: _Optional[_Union[Callback, _Mapping]] = ..., logs: _Optional[_Union[LogsReply, _Mapping]] = ...) -> None: ...

class LogsReply(_message.Message):
    __slots__ = ("request_id", "found", "running", "truncated", "chunks")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    FOUND_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    found: bool
    running: bool
    truncated: bool
    chunks: _containers.RepeatedCompositeFieldContainer[LogChunk]
    def __init__(self, request_id: _Optional[int] = ..., found: _Optional[bool] = ..., running: _Optional[bool] = ..., truncated: _Optional[bool] = ..., chunks: _Optional[_Iterable[_Union[LogChunk, _Mapping]]] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("stderr", "text")
    STDERR_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    stderr: bool
    text: str
    def __init__(self, stderr: _Optional[bool] = ..., text: _Optional[str] = ...) -> None: ...

class CallbackReply(_message.Message):
    __slots__ = ("request_id", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    error: str
    def __init__(self, request_id: _Optional[int] = ..., error: _Optional[str] = ...) -> None: ...

class Callback(_message.Message):
    __slots__ = ("callback_id", "args")
    CALLBACK_ID_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    callback_id: str
    args: Pickled
    def __init__(self, callback_id: _Optional[str] = ..., args: _Optional[_Union[Pickled, _Mapping]] = ...) -> None: ...

class ObjectsReply(_message.Message):
    __slots__ = ("request_id", "objects")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    objects: _containers.RepeatedCompositeFieldContainer[ObjectInfo]
    def __init__(self, request_id: _Optional[int] = ..., objects: _Optional[_Iterable[_Union[ObjectInfo, _Mapping]]] = ...) -> None: ...

class ObjectInfo(_message.Message):
    __slots__ = ("object_id", "name", "type_name", "methods", "max_concurrency", "restart", "calls", "restarts", "pid")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_NAME_FIELD_NUMBER: _ClassVar[int]
    METHODS_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    object_id: str
    name: str
    type_name: str
    methods: _containers.RepeatedScalarFieldContainer[str]
    max_concurrency: int
    restart: bool
    calls: int
    restarts: int
    pid: int
    def __init__(self, object_id: _Optional[str] = ..., name: _Optional[str] = ..., type_name: _Optional[str] = ..., methods: _Optional[_Iterable[str]] = ..., max_concurrency: _Optional[int] = ..., restart: _Optional[bool] = ..., calls: _Optional[int] = ..., restarts: _Optional[int] = ..., pid: _Optional[int] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("server_name", "server_version", "python_version", "tags", "resources", "workers", "session_id", "resumed", "shm", "shm_prefix", "local_address")
    class ResourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    SERVER_NAME_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    PYTHON_VERSION_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    SHM_FIELD_NUMBER: _ClassVar[int]
    SHM_PREFIX_FIELD_NUMBER: _ClassVar[int]
    LOCAL_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    server_name: str
    server_version: str
    python_version: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    resources: _containers.ScalarMap[str, float]
    workers: int
    session_id: str
    resumed: bool
    shm: bool
    shm_prefix: str
    local_address: str
    def __init__(self, server_name: _Optional[str] = ..., server_version: _Optional[str] = ..., python_version: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., resources: _Optional[_Mapping[str, float]] = ..., workers: _Optional[int] = ..., session_id: _Optional[str] = ..., resumed: _Optional[bool] = ..., shm: _Optional[bool] = ..., shm_prefix: _Optional[str] = ..., local_address: _Optional[str] = ...) -> None: ...

class Events(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("task_id", "started", "output", "done", "failed")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    FAILED_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    started: Started
    output: Output
    done: Done
    failed: Failure
    def __init__(self, task_id: _Optional[str] = ..., started: _Optional[_Union[Started, _Mapping]] = ..., output: _Optional[_Union[Output, _Mapping]] = ..., done: _Optional[_Union[Done, _Mapping]] = ..., failed: _Optional[_Union[Failure, _Mapping]] = ...) -> None: ...

class Started(_message.Message):
    __slots__ = ("worker",)
    WORKER_FIELD_NUMBER: _ClassVar[int]
    worker: int
    def __init__(self, worker: _Optional[int] = ...) -> None: ...

class Output(_message.Message):
    __slots__ = ("stream", "text")
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    stream: str
    text: str
    def __init__(self, stream: _Optional[str] = ..., text: _Optional[str] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("name", "inline", "ref")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INLINE_FIELD_NUMBER: _ClassVar[int]
    REF_FIELD_NUMBER: _ClassVar[int]
    name: str
    inline: Pickled
    ref: ObjectRef
    def __init__(self, name: _Optional[str] = ..., inline: _Optional[_Union[Pickled, _Mapping]] = ..., ref: _Optional[_Union[ObjectRef, _Mapping]] = ...) -> None: ...

class ObjectRef(_message.Message):
    __slots__ = ("object_id", "type_name", "size", "repr")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_NAME_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    REPR_FIELD_NUMBER: _ClassVar[int]
    object_id: str
    type_name: str
    size: int
    repr: str
    def __init__(self, object_id: _Optional[str] = ..., type_name: _Optional[str] = ..., size: _Optional[int] = ..., repr: _Optional[str] = ...) -> None: ...

class Done(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[Value]
    def __init__(self, values: _Optional[_Iterable[_Union[Value, _Mapping]]] = ...) -> None: ...

class Failure(_message.Message):
    __slots__ = ("kind", "type_name", "message", "traceback")
    KIND_FIELD_NUMBER: _ClassVar[int]
    TYPE_NAME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    kind: str
    type_name: str
    message: str
    traceback: str
    def __init__(self, kind: _Optional[str] = ..., type_name: _Optional[str] = ..., message: _Optional[str] = ..., traceback: _Optional[str] = ...) -> None: ...

class FetchReply(_message.Message):
    __slots__ = ("request_id", "value", "error")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    value: Pickled
    error: str
    def __init__(self, request_id: _Optional[int] = ..., value: _Optional[_Union[Pickled, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class StatsReply(_message.Message):
    __slots__ = ("request_id", "objects", "object_bytes", "objects_total", "tasks_done", "tasks_failed", "workers", "busy", "workers_replaced", "sessions", "objects_pulled", "bytes_pulled", "objects_served", "bytes_served", "remote_objects")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    OBJECT_BYTES_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    TASKS_DONE_FIELD_NUMBER: _ClassVar[int]
    TASKS_FAILED_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    WORKERS_REPLACED_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_PULLED_FIELD_NUMBER: _ClassVar[int]
    BYTES_PULLED_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_SERVED_FIELD_NUMBER: _ClassVar[int]
    BYTES_SERVED_FIELD_NUMBER: _ClassVar[int]
    REMOTE_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    request_id: int
    objects: int
    object_bytes: int
    objects_total: int
    tasks_done: int
    tasks_failed: int
    workers: int
    busy: int
    workers_replaced: int
    sessions: int
    objects_pulled: int
    bytes_pulled: int
    objects_served: int
    bytes_served: int
    remote_objects: int
    def __init__(self, request_id: _Optional[int] = ..., objects: _Optional[int] = ..., object_bytes: _Optional[int] = ..., objects_total: _Optional[int] = ..., tasks_done: _Optional[int] = ..., tasks_failed: _Optional[int] = ..., workers: _Optional[int] = ..., busy: _Optional[int] = ..., workers_replaced: _Optional[int] = ..., sessions: _Optional[int] = ..., objects_pulled: _Optional[int] = ..., bytes_pulled: _Optional[int] = ..., objects_served: _Optional[int] = ..., bytes_served: _Optional[int] = ..., remote_objects: _Optional[int] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class PullRequest(_message.Message):
    __slots__ = ("object_id", "server", "holder", "proof")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    object_id: str
    server: str
    holder: str
    proof: bytes
    def __init__(self, object_id: _Optional[str] = ..., server: _Optional[str] = ..., holder: _Optional[str] = ..., proof: _Optional[bytes] = ...) -> None: ...

class PullHeader(_message.Message):
    __slots__ = ("type_name", "repr", "data_size", "buffer_sizes")
    TYPE_NAME_FIELD_NUMBER: _ClassVar[int]
    REPR_FIELD_NUMBER: _ClassVar[int]
    DATA_SIZE_FIELD_NUMBER: _ClassVar[int]
    BUFFER_SIZES_FIELD_NUMBER: _ClassVar[int]
    type_name: str
    repr: str
    data_size: int
    buffer_sizes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, type_name: _Optional[str] = ..., repr: _Optional[str] = ..., data_size: _Optional[int] = ..., buffer_sizes: _Optional[_Iterable[int]] = ...) -> None: ...

class PullChunk(_message.Message):
    __slots__ = ("header", "data", "error")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    header: PullHeader
    data: bytes
    error: str
    def __init__(self, header: _Optional[_Union[PullHeader, _Mapping]] = ..., data: _Optional[bytes] = ..., error: _Optional[str] = ...) -> None: ...

class Member(_message.Message):
    __slots__ = ("name", "address", "tags", "resources", "workers", "busy", "queued", "objects", "object_bytes", "sessions", "joined", "last_heartbeat", "tls", "rss", "workers_rss", "store_keys", "store_bytes", "remote_objects", "named_objects", "instance")
    class ResourcesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    BUSY_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    OBJECT_BYTES_FIELD_NUMBER: _ClassVar[int]
    SESSIONS_FIELD_NUMBER: _ClassVar[int]
    JOINED_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    TLS_FIELD_NUMBER: _ClassVar[int]
    RSS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_RSS_FIELD_NUMBER: _ClassVar[int]
    STORE_KEYS_FIELD_NUMBER: _ClassVar[int]
    STORE_BYTES_FIELD_NUMBER: _ClassVar[int]
    REMOTE_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    NAMED_OBJECTS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    resources: _containers.ScalarMap[str, float]
    workers: int
    busy: int
    queued: int
    objects: int
    object_bytes: int
    sessions: int
    joined: float
    last_heartbeat: float
    tls: bool
    rss: int
    workers_rss: int
    store_keys: int
    store_bytes: int
    remote_objects: int
    named_objects: _containers.RepeatedCompositeFieldContainer[NamedObject]
    instance: str
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., resources: _Optional[_Mapping[str, float]] = ..., workers: _Optional[int] = ..., busy: _Optional[int] = ..., queued: _Optional[int] = ..., objects: _Optional[int] = ..., object_bytes: _Optional[int] = ..., sessions: _Optional[int] = ..., joined: _Optional[float] = ..., last_heartbeat: _Optional[float] = ..., tls: _Optional[bool] = ..., rss: _Optional[int] = ..., workers_rss: _Optional[int] = ..., store_keys: _Optional[int] = ..., store_bytes: _Optional[int] = ..., remote_objects: _Optional[int] = ..., named_objects: _Optional[_Iterable[_Union[NamedObject, _Mapping]]] = ..., instance: _Optional[str] = ...) -> None: ...

class NamedObject(_message.Message):
    __slots__ = ("name", "type_name", "calls", "restarts", "pid")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_NAME_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    name: str
    type_name: str
    calls: int
    restarts: int
    pid: int
    def __init__(self, name: _Optional[str] = ..., type_name: _Optional[str] = ..., calls: _Optional[int] = ..., restarts: _Optional[int] = ..., pid: _Optional[int] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("token", "member")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    token: str
    member: Member
    def __init__(self, token: _Optional[str] = ..., member: _Optional[_Union[Member, _Mapping]] = ...) -> None: ...

class JoinReply(_message.Message):
    __slots__ = ("heartbeat_interval", "report_tasks")
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    REPORT_TASKS_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval: float
    report_tasks: bool
    def __init__(self, heartbeat_interval: _Optional[float] = ..., report_tasks: _Optional[bool] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("token", "member")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    token: str
    member: Member
    def __init__(self, token: _Optional[str] = ..., member: _Optional[_Union[Member, _Mapping]] = ...) -> None: ...

class HeartbeatReply(_message.Message):
    __slots__ = ("known",)
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    known: bool
    def __init__(self, known: _Optional[bool] = ...) -> None: ...

class LeaveRequest(_message.Message):
    __slots__ = ("token", "name")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    token: str
    name: str
    def __init__(self, token: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class LeaveReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("token",)
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: str
    def __init__(self, token: _Optional[str] = ...) -> None: ...

class Membership(_message.Message):
    __slots__ = ("members", "settling")
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    SETTLING_FIELD_NUMBER: _ClassVar[int]
    members: _containers.RepeatedCompositeFieldContainer[Member]
    settling: bool
    def __init__(self, members: _Optional[_Iterable[_Union[Member, _Mapping]]] = ..., settling: _Optional[bool] = ...) -> None: ...

class TaskReport(_message.Message):
    __slots__ = ("token", "server", "notes", "dropped")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    SERVER_FIELD_NUMBER: _ClassVar[int]
    NOTES_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    token: str
    server: str
    notes: _containers.RepeatedCompositeFieldContainer[TaskNote]
    dropped: int
    def __init__(self, token: _Optional[str] = ..., server: _Optional[str] = ..., notes: _Optional[_Iterable[_Union[TaskNote, _Mapping]]] = ..., dropped: _Optional[int] = ...) -> None: ...

class TaskNote(_message.Message):
    __slots__ = ("task", "kind", "at", "label", "client", "worker", "text", "error_kind", "error_type", "error_message", "traceback", "queued_at", "started_at", "ended_at")
    TASK_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    AT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ERROR_KIND_FIELD_NUMBER: _ClassVar[int]
    ERROR_TYPE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    QUEUED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ENDED_AT_FIELD_NUMBER: _ClassVar[int]
    task: str
    kind: str
    at: float
    label: str
    client: str
    worker: int
    text: str
    error_kind: str
    error_type: str
    error_message: str
    traceback: str
    queued_at: float
    started_at: float
    ended_at: float
    def __init__(self, task: _Optional[str] = ..., kind: _Optional[str] = ..., at: _Optional[float] = ..., label: _Optional[str] = ..., client: _Optional[str] = ..., worker: _Optional[int] = ..., text: _Optional[str] = ..., error_kind: _Optional[str] = ..., error_type: _Optional[str] = ..., error_message: _Optional[str] = ..., traceback: _Optional[str] = ..., queued_at: _Optional[float] = ..., started_at: _Optional[float] = ..., ended_at: _Optional[float] = ...) -> None: ...

class ClientShare(_message.Message):
    __slots__ = ("token", "client", "kind", "name", "data")
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    token: str
    client: str
    kind: str
    name: str
    data: str
    def __init__(self, token: _Optional[str] = ..., client: _Optional[str] = ..., kind: _Optional[str] = ..., name: _Optional[str] = ..., data: _Optional[str] = ...) -> None: ...

class ShareReply(_message.Message):
    __slots__ = ("shown", "flows_watched")
    SHOWN_FIELD_NUMBER: _ClassVar[int]
    FLOWS_WATCHED_FIELD_NUMBER: _ClassVar[int]
    shown: bool
    flows_watched: bool
    def __init__(self, shown: _Optional[bool] = ..., flows_watched: _Optional[bool] = ...) -> None: ...

class TaskReportReply(_message.Message):
    __slots__ = ("known",)
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    known: bool
    def __init__(self, known: _Optional[bool] = ...) -> None: ...
