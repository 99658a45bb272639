"""The manifest-file source: Services, EndpointSlices and Nodes from YAML files, reloaded on change.

Reads one file or a directory (recursively, *.yaml/*.yml/*.json, hidden files skipped) of
multi-document YAML, including `kind: List` documents as `kubectl get svc,endpointslices,nodes
-o yaml` prints them. A bad document rejects the whole reload: the error names the file, the
document index and the field, and the last good state stays. Work is bounded before objects are
built: files above MAX_MANIFEST_BYTES, YAML alias bombs and duplicate keys are refused
(control._safe_yaml). Never raises from the poll thread.
"""
import json
import logging
import os
import threading
import time

import yaml

from control import _safe_yaml
from control._safe_yaml import short
from control.convert import CONVERTERS, ManifestError, state_from_models
from control.model import ClusterState

log = logging.getLogger("xskproxy.manifests")

MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
LIST_KINDS = {"List", "ServiceList", "EndpointSliceList", "NodeList"}
IGNORED_KINDS_LOGGED = set()
MAX_MANIFEST_BYTES = 64 << 20      # per file: kubectl's JSON of 10,000 Services is ~15 MB


def manifest_files(path):
    """The manifest files under `path` (itself if a file), sorted for a stable order."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise ManifestError("", f"{path}: no such file or directory")
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found.extend(os.path.join(root, f) for f in files
                     if not f.startswith(".") and f.endswith(MANIFEST_SUFFIXES))
    return sorted(found)


def _objects_of_document(doc, where):
    """(object, where) pairs of one YAML document: the document itself or a list's items."""
    if doc is None:
        return []
    if not isinstance(doc, dict):
        raise ManifestError("", f"document is not a mapping but {type(doc).__name__}", where)
    kind = _kind(doc, where)
    if kind in LIST_KINDS:
        items = doc.get("items") or []
        if not isinstance(items, list):
            raise ManifestError("items", "is not a list", where)
        item_kind = kind[:-4] if kind != "List" else None
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise ManifestError(f"items[{i}]", "is not a mapping", where)
            if item_kind and "kind" not in item:
                item = dict(item, kind=item_kind)
            out.append((item, f"{where} items[{i}]"))
        return out
    return [(doc, where)]


def _kind(obj, where):
    """obj's kind: a string or None (then the converters say it is required)."""
    kind = obj.get("kind")
    if kind is not None and not isinstance(kind, str):
        raise ManifestError("kind", f"{short(kind)} is not a string", where)
    return kind


def _describe(obj):
    """'Kind namespace/name' of an object for its errors, each part bounded whatever it holds."""
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}

    def part(value, default):
        if value is None or value == "":
            return default
        return value if isinstance(value, str) and len(value) <= 80 else short(value, 40)
    name = part(meta.get("name"), "?")
    if meta.get("namespace"):
        name = f"{part(meta['namespace'], '')}/{name}"
    return f"{part(obj.get('kind'), '?')} {name}"


def _read_documents(file_name):
    """The documents of one manifest file; ManifestError naming the file (and the document) for
    an unreadable, oversized, malformed or refused one."""
    try:
        with open(file_name, "rb") as f:
            data = _safe_yaml.read_capped(f, MAX_MANIFEST_BYTES, "the file")
        if str(file_name).endswith(".json"):        # kubectl -o json: 50x faster than as YAML
            return [json.loads(data)]
        return _safe_yaml.load_all(data)
    except OSError as e:
        raise ManifestError("", f"cannot read: {e.strerror}", file_name) from None
    except RecursionError:
        raise ManifestError("", "nested too deeply", file_name) from None
    except _safe_yaml.YamlRefused as e:
        where = f"{file_name} document {e.document}" if hasattr(e, "document") else file_name
        raise ManifestError("", f"refused{f' at line {e.line}' if e.line else ''}: {e.problem}",
                            where) from None
    except ValueError as e:                         # json.JSONDecodeError, int() of 5,000 digits
        raise ManifestError("", f"not valid JSON: {short(str(e), 200)}", file_name) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ManifestError("", f"not valid YAML{at}: {getattr(e, 'problem', e)}",
                            f"{file_name} document {e.document}") from None


def load_models(path):
    """All Services, EndpointSlices and Nodes under `path`, with the place each came from.

    Returns [(model, where)]. Raises ManifestError naming file, document index and field for the
    first bad document or object; objects of other kinds are skipped (logged once per kind).
    """
    out = []
    for file_name in manifest_files(path):
        for index, doc in enumerate(_read_documents(file_name)):
            for obj, where in _objects_of_document(doc, f"{file_name} document {index}"):
                kind = _kind(obj, where)
                converter = CONVERTERS.get(kind)
                if converter is None:
                    if kind is None:
                        raise ManifestError("kind", "is required", where)
                    if kind not in IGNORED_KINDS_LOGGED:
                        IGNORED_KINDS_LOGGED.add(kind)
                        log.info("event=manifest_kind_ignored kind=%s where=%r", short(kind), where)
                    continue
                try:
                    out.append((converter(obj), f"{where} ({_describe(obj)})"))
                except ManifestError as e:
                    raise e.located(f"{where} ({_describe(obj)})") from None
    return out


def load_state(path):
    """ClusterState from the manifests under `path`; raises ManifestError for a bad document or
    for two objects of the same kind and name."""
    seen = {}
    models = []
    for model, where in load_models(path):
        key = (type(model).__name__, getattr(model, "key", None) or model.name)
        if key in seen:
            raise ManifestError("metadata.name", f"duplicate {key[0]} (first in {seen[key]})", where)
        seen[key] = where
        models.append(model)
    return state_from_models(models)


def _fingerprint(path):
    """What changes when a manifest changes: each file's name, inode, mtime and size."""
    try:
        files = manifest_files(path)
    except ManifestError:
        return None
    out = []
    for name in files:
        try:
            st = os.stat(name)
        except OSError:
            continue
        out.append((name, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)


class ManifestSource:
    """Polls `path` every `interval` seconds; on a change loads it and, if it is good, replaces
    `state` and calls `on_change()`. A bad reload keeps the last good state and sets `error`."""

    def __init__(self, path, on_change=None, interval=0.5):
        self.path = path
        self.on_change = on_change
        self.interval = interval
        self.state = ClusterState()
        self.error = None              # str of the last failed load, None after a good one
        self.loads = 0                 # successful loads
        self.failures = 0              # failed loads
        self.last_load_time = None     # time.time() of the last successful load
        self._fingerprint = ()
        self._stop = threading.Event()
        self._thread = None

    def poll(self):
        """Reload if the files changed. Returns True when `state` changed."""
        fingerprint = _fingerprint(self.path)
        if fingerprint == self._fingerprint:
            return False
        self._fingerprint = fingerprint
        try:
            state = load_state(self.path)
        except ManifestError as e:
            self.failures += 1
            if str(e) != self.error:
                log.error("event=manifest_rejected path=%s error=%r kept=last_good", self.path, str(e))
            self.error = str(e)
            return False
        except Exception as e:        # a bug must not end the poll thread; report it like a bad file
            self.failures += 1
            self.error = f"{type(e).__name__}: {e}"
            log.exception("event=manifest_load_failed path=%s", self.path)
            return False
        self.error = None
        self.loads += 1
        self.last_load_time = time.time()
        if state == self.state:
            return False
        self.state = state
        log.info("event=manifests_loaded path=%s services=%d endpoint_slices=%d nodes=%d", self.path,
                 len(state.services), len(state.endpoint_slices), len(state.nodes))
        if self.on_change is not None:
            self.on_change()
        return True

    def snapshot(self):
        """The last good ClusterState."""
        return self.state

    def has_synced(self):
        """True once the manifests have loaded successfully at least once."""
        return self.loads > 0

    def staleness(self):
        """Seconds since the files were last read successfully (0 after a good load)."""
        if self.error is None and self.last_load_time is not None:
            return 0.0
        return time.time() - self.last_load_time if self.last_load_time else float("inf")

    def start(self):
        self.poll()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="manifest-source", daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:           # never let the poll thread die
                log.exception("event=manifest_poll_failed path=%s", self.path)

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
