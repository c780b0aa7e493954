"""The node daemon: Falco inputs, feature kernels, scorer, publisher, spool, metrics, health."""
