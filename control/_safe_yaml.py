"""Bounded YAML for the agent's own input files (configuration, manifests), and short() for
values in error messages.

A document is checked on its node graph before any object is built: its aliases may not
expand it past a node budget (a 1 KB "billion laughs" would otherwise cost gigabytes to walk or
print), may not be recursive, and no mapping may repeat a key. Never builds an object of a
document that fails those checks; never formats a value without a bound.
"""
import gc
import itertools
import reprlib

import yaml

ALIAS_NODES_MIN = 10_000       # nodes aliases may add to any document, however small it is
MERGE_TAG = "tag:yaml.org,2002:merge"


def _event_loader():
    """libyaml's parser with PyYAML's Python composer, SafeConstructor and Resolver.

    yaml.CSafeLoader composes a whole document in one C call that holds the GIL throughout
    (~0.1 s for the lab's 17 KB manifest on a busy node, 1 s and more for a large cluster's);
    the agent's AF_XDP workers need the GIL every few milliseconds to start their next slice,
    so every manifest reload froze the userspace tier that long (new connections timed out
    while the fast path kept established ones going). Here C hands over one event at a time and
    the composer runs in Python, which gives the GIL up every switch interval: 1.5-3x the C
    composer's time (libyaml still scans and parses; pure Python is 10x), and the GIL is never
    held for more than an event."""
    try:
        from yaml._yaml import CParser
    except ImportError:                         # PyYAML without libyaml: pure Python anyway
        return yaml.SafeLoader
    from yaml.composer import Composer
    from yaml.constructor import SafeConstructor
    from yaml.resolver import Resolver

    class EventLoader(Composer, CParser, SafeConstructor, Resolver):   # Composer first: its get_node
        def __init__(self, stream):
            CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

    return EventLoader


_Loader = _event_loader()


class YamlRefused(ValueError):
    """Valid YAML refused before it is built: `problem` says why, `line` (1-based) where, or 0."""

    def __init__(self, problem, line=0):
        self.problem = problem
        self.line = line
        super().__init__(f"line {line}: {problem}" if line else problem)


class _ShortRepr(reprlib.Repr):
    """reprlib's limits, without its sorting of every key of a dict or set (O(n log n))."""

    def __init__(self):
        super().__init__()
        self.maxlevel, self.maxlist, self.maxtuple, self.maxdict, self.maxset = 2, 4, 4, 4, 4
        self.maxstring, self.maxother, self.maxlong = 40, 40, 40

    def repr_dict(self, x, level):
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        pieces = [f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}"
                  for k, v in itertools.islice(x.items(), self.maxdict)]
        return "{" + ", ".join(pieces) + (", ..." if len(x) > self.maxdict else "") + "}"

    def repr_set(self, x, level):
        if not x:
            return "set()"
        if level <= 0:
            return "{...}"
        pieces = [self.repr1(item, level - 1) for item in itertools.islice(x, self.maxset)]
        return "{" + ", ".join(pieces) + (", ..." if len(x) > self.maxset else "") + "}"


_repr = _ShortRepr()


def short(value, limit=60):
    """repr(value) for an error message, about `limit` characters at most whatever the value
    (its cost is bounded too), with the length when it is cut: 'aaa...' (1048576 characters)."""
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit - 20]!r}... ({len(value)} characters)"
    if isinstance(value, (list, tuple, dict, set)):
        text = _repr.repr(value)
        if len(text) > limit:
            text = text[:limit - 3] + "..."
        if "..." not in text:
            return text
        noun = "entr" + ("y" if len(value) == 1 else "ies") if isinstance(value, dict) else \
            "item" + ("" if len(value) == 1 else "s")
        return f"{text} ({type(value).__name__} of {len(value)} {noun})"
    return _repr.repr(value)[:limit]


def read_capped(f, max_bytes, what="file"):
    """The bytes of open binary file `f`, refused (YamlRefused) beyond max_bytes without reading
    more than max_bytes + 1."""
    data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise YamlRefused(f"{what} is larger than the limit of {max_bytes} bytes")
    return data


def _line(node):
    mark = getattr(node, "start_mark", None)
    return mark.line + 1 if mark is not None else 0


def _refuse_duplicate_keys(pairs):
    """Refuse a scalar key written twice in one mapping, compared as written with its resolved
    tag (keys merged in with `<<` may be overridden: they are not in `pairs` yet)."""
    keys = [k.value for k, _ in pairs if type(k) is yaml.ScalarNode and k.tag != MERGE_TAG]
    if len(keys) == len(set(keys)):
        return
    seen = set()
    for k, _ in pairs:
        if type(k) is yaml.ScalarNode and k.tag != MERGE_TAG:
            if (k.tag, k.value) in seen:
                raise YamlRefused(f"duplicate key {short(k.value)}", _line(k))
            seen.add((k.tag, k.value))


def _check_document(root):
    """Walk the node graph of one document, each collection once: refuse duplicate keys,
    recursive aliases, and aliases expanding the document by more than
    max(ALIAS_NODES_MIN, the nodes it writes). Nesting is bounded by libyaml (1000 levels)."""
    expanded = {}                     # id(collection) -> nodes under it, aliases expanded, itself included
    on_path = set()                   # ids of the collections being walked (an alias to one is a cycle)
    written = 0
    scalar = yaml.ScalarNode

    def walk(node):
        nonlocal written
        key = id(node)
        size = expanded.get(key)
        if size is not None:
            return size
        if key in on_path:
            raise YamlRefused("an alias refers to a node that contains it (recursive)", _line(node))
        on_path.add(key)
        size = 1
        if type(node) is yaml.MappingNode:
            _refuse_duplicate_keys(node.value)
            for k, v in node.value:
                size += (1 if type(k) is scalar else walk(k)) + (1 if type(v) is scalar else walk(v))
            written += 1 + sum((type(k) is scalar) + (type(v) is scalar) for k, v in node.value)
        else:
            for item in node.value:
                size += 1 if type(item) is scalar else walk(item)
            written += 1 + sum(type(item) is scalar for item in node.value)
        on_path.discard(key)
        expanded[key] = size
        return size

    if type(root) is scalar:
        return
    try:
        total = walk(root)
    except RecursionError:
        raise YamlRefused("nested too deeply", _line(root)) from None
    budget = written + max(ALIAS_NODES_MIN, written)
    if total > budget:
        raise YamlRefused(f"aliases expand the document from {written} nodes to {total}, "
                          f"more than the {budget} allowed (a YAML alias bomb)", _line(root))


def load_all(data):
    """The documents of YAML text or bytes `data` (safe tags only). Raises yaml.YAMLError for bad
    YAML and YamlRefused for a refused document; either has `.document` set to its index.

    The cyclic garbage collector is off meanwhile (documents make no reference cycles): the
    hundreds of thousands of objects a large document makes would otherwise set off full
    collections, each holding the GIL for the whole heap's walk (0.05 s growing to 0.8 s for a
    2 MB manifest), which the AF_XDP workers wait for as for the C composer (_event_loader)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _load_all(data)
    finally:
        if collecting:
            gc.enable()


def _load_all(data):
    loader = _Loader(data)
    documents = []
    try:
        while loader.check_node():
            node = loader.get_node()
            try:
                _check_document(node)
                documents.append(loader.construct_document(node))
            except yaml.YAMLError:
                raise
            except ValueError as e:                  # e.g. int() of a 5,000-digit number
                if not isinstance(e, YamlRefused):
                    why = str(e) if len(str(e)) <= 120 else str(e)[:117] + "..."
                    e = YamlRefused(f"a value cannot be built: {why}", _line(node))
                e.document = len(documents)
                raise e from None
    except yaml.YAMLError as e:
        e.document = len(documents)
        raise
    finally:
        loader.dispose()
    return documents


def load(data):
    """The single document of `data` (None when empty); errors as load_all's."""
    documents = load_all(data)
    if len(documents) > 1:
        raise YamlRefused(f"{len(documents)} documents where one is expected")
    return documents[0] if documents else None
