"""The web dashboard (docs/dashboard.md): cluster, tasks, objects and a workspace's graph,
live, behind the cluster token.

Layers: :mod:`~sperse._dashboard.model` (what is shown: pure tables and the journal of
changes), :mod:`~sperse._dashboard.hub` (that state behind a lock, fed from any thread),
:mod:`~sperse._dashboard.auth` (the token, then a cookie), :mod:`~sperse._dashboard.app`
(the Starlette app: pages, JSON, server-sent events), :mod:`~sperse._dashboard.serve`
(uvicorn on a host's loop, or on a thread of its own). ``static/`` holds the pages' script
and style and the vendored cytoscape.js and dagre (``static/vendor/README.md``).

Hosts fill a ``Hub``: the coordinator (``sperse coordinator --dashboard-port``, ``sperse
up``) with its membership; a client (``sperse.connect(dashboard=True)``,
``sperse._cluster.dashboard``) with its servers, tasks, objects and workspaces. This
package knows neither: it imports nothing of the client or the server side.

Nothing is imported here: starlette and uvicorn load only where a dashboard is served.
"""
