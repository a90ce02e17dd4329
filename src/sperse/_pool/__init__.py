"""A pool of worker processes that turns payload bytes into result bytes: ``pool`` (the
shell, ``WorkerPool``), ``policy`` (its decisions), ``events`` (what it reports), ``procs``
and ``worker`` (the worker processes).

Nothing is imported here: a worker process imports this package before ``worker``, and
should not pay for the pool's side.
"""
