"""What runs in a worker: load a task, run it, capture what it printed, encode the outcome
(``runner``). Below every backend and the server: they ship work to it, never the reverse."""
