# mapgate's own pytest plugins (the gate and the benchmark half) are registered by the `pytest11`
# entry points of the installed package; listing them here as well would register them twice.
# pytester runs the example user repository in a subprocess (tests/test_user_repo.py).
pytest_plugins = ["pytester"]
