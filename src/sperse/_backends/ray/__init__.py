"""The Ray backend: remote work as Ray tasks, remote objects as Ray actors (docs/ray.md).

Ray pickles the functions and classes it runs by their module path, so each process of the
cluster imports this package: the modules run there are marked *worker side*.

- :mod:`.protocol`: what the driver and the workers exchange (the formats), and the names
  they agree on (``NAME_LABEL``, ``OBJECTS_NAMESPACE``);
- :mod:`.imports`: ``import_ray``, Ray imported on first use with Sperse's defaults;
- :mod:`.errors`: Ray's exceptions as Sperse's errors;
- worker side: :mod:`.worker` (``_run_task``, what a task runs; callbacks; nested work),
  :mod:`.relay` (output and word of a start, to the driver's mailbox actor),
  :mod:`.actors` (``_ObjectActor``, a remote object), :mod:`.state` (``sperse.state()``:
  a store actor per node);
- driver side: :mod:`.driver` (``RayBackend``), :mod:`.join` (joining or starting Ray),
  :mod:`.inflight` (the tasks between submit and their end), :mod:`.io_thread` (the thread
  that reports what Ray did), :mod:`.held` (values held in Ray's object store),
  :mod:`.objects` (remote objects' actors), :mod:`.placement` (nodes as servers, placement
  as Ray's options).

Importing this package imports the driver (which imports the worker side): every process
that loads a task of Sperse's thus has the registrations the worker side relies on.
"""

from sperse._backends.ray.driver import RayBackend
from sperse._backends.ray.imports import import_ray
from sperse._backends.ray.protocol import NAME_LABEL, OBJECTS_NAMESPACE

__all__ = ["NAME_LABEL", "OBJECTS_NAMESPACE", "RayBackend", "import_ray"]
