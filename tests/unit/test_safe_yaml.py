"""Bounded YAML (control._safe_yaml): what is refused before any object is built, what is not,
and error values that stay short whatever they hold."""
import pytest

from control._safe_yaml import ALIAS_NODES_MIN, YamlRefused, load, load_all, short


def test_ordinary_anchors_and_merge_keys_still_load():
    """Anchors reused a few times and `<<` merges with overrides load as PyYAML loads them."""
    text = "base: &b {app: web, tier: front}\nsvc: {<<: *b, tier: back}\nsel: [*b, *b]\n"
    assert load(text) == {"base": {"app": "web", "tier": "front"},
                          "svc": {"app": "web", "tier": "back"},
                          "sel": [{"app": "web", "tier": "front"}] * 2}


def test_aliases_may_add_up_to_the_minimum_budget_but_not_beyond():
    """A small document may expand to ALIAS_NODES_MIN more nodes; one level more is refused."""
    row = "[" + ",".join(["x"] * 100) + "]"
    fits = f"a: &a {row}\nb: [" + ",".join(["*a"] * (ALIAS_NODES_MIN // 101 - 1)) + "]\n"
    assert len(load(fits)["b"]) == ALIAS_NODES_MIN // 101 - 1
    with pytest.raises(YamlRefused, match="alias bomb"):
        load(f"a: &a {row}\nb: &b [" + ",".join(["*a"] * 100) + "]\nc: [*b, *b]\n")


def test_recursive_alias_is_refused():
    with pytest.raises(YamlRefused, match="recursive"):
        load("a: &x [1, *x]\n")


def test_keys_of_different_types_are_not_duplicates_but_a_repeated_one_is():
    """1 and "1" are two keys; `a` twice is refused with its line and the document's index."""
    assert load('1: a\n"1": b\n') == {1: "a", "1": "b"}
    with pytest.raises(YamlRefused) as err:
        load_all("ok: 1\n---\nx: 1\ny:\n  a: 1\n  a: 2\n")
    assert err.value.document == 1 and err.value.line == 6 and "duplicate key 'a'" in str(err.value)


def test_a_value_python_cannot_build_is_refused_not_a_bare_value_error():
    with pytest.raises(YamlRefused, match="cannot be built"):
        load("a: " + "1" * 5000 + "\n")


@pytest.mark.parametrize("value, expected", [
    ("x" * 10_000, "(10000 characters)"),
    (list(range(1_000_000)), "(list of 1000000 items)"),
    ({str(i): i for i in range(1000)}, "(dict of 1000 entries)"),
    ([[[[[["deep"]]]]]], "[[[...]]]"),
])
def test_short_is_bounded_and_says_the_length(value, expected):
    text = short(value)
    assert expected in text and len(text) < 120


def test_short_leaves_small_values_as_repr():
    assert short("web") == "'web'" and short([1, 2]) == "[1, 2]" and short(None) == "None"


def test_short_of_a_huge_mapping_does_not_look_at_every_key():
    """reprlib sorts every key of a dict first (seconds for millions); short() takes the first few."""
    import time
    huge = {f"key-{i}": i for i in range(2_000_000)}
    started = time.perf_counter()
    assert short(huge).endswith("(dict of 2000000 entries)")
    assert time.perf_counter() - started < 0.02      # reprlib: ~0.1 s


def _longest_wait_of_a_gil_sharing_thread_while(work):
    """Run work() while another thread does what an AF_XDP worker does between its nogil slices
    (give the GIL up, take it back): (seconds work took, longest that thread waited)."""
    import threading
    import time
    stop, gaps = threading.Event(), []

    def worker():
        last = time.perf_counter()
        while not stop.is_set():
            time.sleep(0.001)                       # releases the GIL, needs it back
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
    thread = threading.Thread(target=worker)
    thread.start()
    time.sleep(0.05)
    gaps.clear()
    started = time.perf_counter()
    work()
    took = time.perf_counter() - started
    stop.set()
    thread.join()
    return took, max(gaps, default=0.0)


def test_loading_a_large_document_never_holds_the_gil_for_long():
    """Another thread gets the GIL at least every few switch intervals while a 2 MB manifest
    (one `kind: List` document, as kubectl prints a cluster) is loaded: yaml.CSafeLoader composed
    the whole document in one C call holding the GIL, which froze the agent's AF_XDP workers for
    the length of every manifest reload (new connections timed out during endpoint churn)."""
    items = "".join(f"- kind: Service\n  metadata: {{name: svc-{i}, namespace: default}}\n"
                    f"  spec:\n    clusterIP: 10.96.{i // 250}.{i % 250}\n    ports:\n"
                    f"    - {{port: 80, targetPort: 8080, protocol: TCP}}\n" for i in range(12_000))
    text = "apiVersion: v1\nkind: List\nitems:\n" + items
    docs = []
    took, longest_wait = _longest_wait_of_a_gil_sharing_thread_while(lambda: docs.extend(load_all(text)))
    assert len(docs[0]["items"]) == 12_000
    assert longest_wait < max(0.1, took / 10), (took, longest_wait)
