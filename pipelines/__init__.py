"""Ray Data / Ray Train entry points and the ``glccl`` command line. All model logic is imported from ``glccl``."""
