"""pytest wiring for bench/: the quick matrix is deselected when the full matrix runs in the same
session (the full run proves the same things). Never changes the machine outside the bench lab."""


def pytest_collection_modifyitems(config, items):
    if any(item.nodeid.startswith("bench/test_bench.py") for item in items):
        items[:] = [item for item in items if not item.nodeid.startswith("bench/test_quick.py")]
