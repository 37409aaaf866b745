"""``circuits serve``: the circuit discovery service.

- :mod:`circuits.service.store`: the store, a folder with an SQLite database (job queue and run index).
- :mod:`circuits.service.jobs`: job kinds and their options, read from the CLI's own command definitions.
- :mod:`circuits.service.runner`: runs one job in-process by invoking the CLI command's click object.
- :mod:`circuits.service.executors`: where jobs run: ``local`` worker processes or a ``ray`` cluster.
- :mod:`circuits.service.dispatcher`: the server's thread that feeds queued jobs to the executor.
- :mod:`circuits.service.app`: the FastAPI application (HTTP API, OpenAPI at ``/docs``).

Nothing here is imported by the rest of the library; FastAPI and uvicorn are imported only by
``app`` and the ``serve`` command.
"""
