"""Dataflow: streams of operators run as replicas that pass batches (docs/flows.md).

``plan`` (the graphs and chaining), ``ops`` (operator logic on batches), ``replica`` and
``control`` (the pure state machines), ``messages`` (their vocabulary) are pure; ``local``
is the in-process shell; ``stream`` and ``api`` are the public builder and run.
"""
