# mapgate's pytest plugin: --models/--backends/--coco-root/... options, the gate session, the matrix.
pytest_plugins = ["mapgate.pytest_plugin"]
