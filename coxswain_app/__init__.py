"""The composition root: the ``coxswain`` command (cli), the wiring of each process from the
services' specs, and the demo. The only package that imports ``services``; nothing imports it
(docs/architecture.md)."""
