# mapgate's pytest plugins: the accuracy gate (--models/--backends/--coco-root/... and the matrix) and
# the benchmark half (--benchmark-batch-size, per-device benchmark storage, device fingerprint).
pytest_plugins = ["mapgate.pytest_plugin", "mapgate.bench_plugin"]
