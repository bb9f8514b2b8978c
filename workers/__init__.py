"""The child side of rknn-farm: what runs inside each worker process.

``workers.main`` is the process entry point; ``workers.context`` runs one
model context per thread; ``workers.backends`` holds one module per runtime
(the only modules that import a runtime library). ``workers.protocol`` and
``workers.segments`` define the wire format and the shared-memory naming that
the parent (``farm/``) speaks too.
"""
