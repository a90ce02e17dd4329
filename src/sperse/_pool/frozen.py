"""Imported last by the forkserver (:mod:`sperse._pool.procs`): ``gc.freeze()`` moves
everything it has imported to the collector's permanent generation. A forked worker shares
those pages with the forkserver until it writes to them; a collection that traversed them
would write (reference counts, the collector's own bits) and copy them all, in each worker.
"""

import gc

gc.freeze()
