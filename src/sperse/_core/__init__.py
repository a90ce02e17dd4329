"""The runtime's vocabulary, below every backend and front end: what a task is
(``work``), what happens to it (``events``), and the ``Backend`` seam (``backend``)."""

from sperse._core.backend import (
    Backend,
    BalancesLoad,
    CallsBack,
    LocalOnly,
    ObjectInfo,
    ServerInfo,
    SupportsLogs,
)
from sperse._core.events import (
    BackendEvent,
    Done,
    ErrorInfo,
    ErrorKind,
    EventSink,
    Failed,
    Output,
    Started,
)
from sperse._core.work import (
    CallTask,
    ObjectCall,
    ObjectClose,
    ObjectCreate,
    PickledFunction,
    Put,
    StatementTask,
    TaskSpec,
    Work,
    pip_requirements,
)

__all__ = [
    "Backend",
    "BackendEvent",
    "BalancesLoad",
    "CallTask",
    "CallsBack",
    "Done",
    "ErrorInfo",
    "ErrorKind",
    "EventSink",
    "Failed",
    "LocalOnly",
    "ObjectCall",
    "ObjectClose",
    "ObjectCreate",
    "ObjectInfo",
    "Output",
    "PickledFunction",
    "Put",
    "ServerInfo",
    "Started",
    "StatementTask",
    "SupportsLogs",
    "TaskSpec",
    "Work",
    "pip_requirements",
]
