"""The client side of a cluster: ``Cluster`` and its queue (``cluster``), ``connect`` (the
composition root, the one importer of concrete backends), ``Pending`` (``pending``),
``sperse.remote`` (``remote``), remote objects (``objects``), callbacks (``callbacks``) and
map/reduce (``mapreduce``)."""
