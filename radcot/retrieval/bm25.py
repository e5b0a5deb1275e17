"""BM25 over a Lucene index (Anserini, through pyjnius): build, search, and fast TREC-run generation.

The JVM starts on first use (:func:`radcot.java.start_jvm`), never at import. Nothing here imports
``pyserini`` itself (its import pulls in torch and takes ~8 s); the Java classes pyserini wraps
(``IndexCollection``, ``SimpleSearcher``, ``SearchCollection``) are called directly, so results are the
same as pyserini's ``LuceneSearcher`` with the same parameters.

Fast path. ``SimpleSearcher`` loads every hit's stored document (raw JSON included) to read its id and
pyserini then converts each hit from Java one attribute at a time: at ``k=1000`` that costs far more than
the search itself. :meth:`BM25Retriever.run` runs the same Lucene query with the same similarity and the
same score-then-doc-id sort through Lucene's public API, reads the ids from the sort values (doc values, no
stored fields), brings all hits of a query to Python in one call (Jackson's JSON of Lucene's public ``TopDocs``
fields, parsed by field name and checked against Lucene's hit count on every query), and applies Anserini's
score-tie adjustment, so rankings and scores equal ``batch_search``'s (checked by the tests and
``bench/bm25_run_generation.py``).

Example:
    >>> from radcot.retrieval.bm25 import BM25Retriever
    >>> bm25 = BM25Retriever.build("data/demo", "runs/demo-bm25")      # doctest: +SKIP
    >>> bm25.search("what causes tides", k=3)                          # doctest: +SKIP
    [ScoredDoc(query_id='q', doc_id='d17', score=7.1234), ...]
    >>> run = bm25.run(queries, k=1000)        # {qid: {docid: score}}  # doctest: +SKIP
"""
from __future__ import annotations

import base64
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from radcot.data.fingerprint import read_index_meta, same_collection
from radcot.records import DataFormatError, Doc, Query, RadcotError, ScoredDoc
from radcot.retrieval.base import META_FILE, PathLike, Run, as_queries, check_k, collection_fingerprint, iter_docs
from radcot.retrieval.errors import RetrievalIndexError
from radcot.retrieval.meta import IndexDamagedError, check_index_files, damaged, index_files, rebuild_hint
from radcot.retrieval.process import (build_temp_prefix, remove_own_build_dirs, remove_stale_build_dirs, rmtree_retry,
                                      run_interruptibly, sigterm_as_interrupt)

logger = logging.getLogger(__name__)

#: Lucene field holding the analysed text (Anserini's ``Constants.CONTENTS``)
CONTENTS_FIELD = "contents"
#: the first ``max_query_terms`` unique terms are kept; raw query text longer than twice this is truncated
DEFAULT_MAX_QUERY_TERMS = 8192
#: indexing threads of a build
DEFAULT_BUILD_THREADS = 2
#: BM25 parameters (Anserini's defaults)
DEFAULT_K1, DEFAULT_B = 0.9, 0.4
#: RM3 parameters (Anserini's defaults)
RM3_DEFAULTS = {"fb_terms": 10, "fb_docs": 10, "original_query_weight": 0.5, "filter_terms": True}
#: Rocchio parameters (Anserini's defaults)
ROCCHIO_DEFAULTS = {"top_fb_terms": 10, "top_fb_docs": 10, "bottom_fb_terms": 10, "bottom_fb_docs": 10,
                    "alpha": 1.0, "beta": 0.75, "gamma": 0.0, "use_negative": False}



def _heap_mb(heap: str) -> int:
    num, unit = int(heap[:-1]) if heap[-1].isalpha() else int(heap), heap[-1].lower() if heap[-1].isalpha() else ""
    return {"k": num // 1024, "m": num, "g": num * 1024, "t": num * 1024 * 1024, "": num // (1024 * 1024)}[unit]


def _adjust_ties(scores: list[float]) -> list[float]:
    """Anserini's ``ScoreTiesAdjusterReranker`` in float32: round to 4 decimals, separate equal scores by 1e-6.

    Keeps the order; makes scores strictly decreasing within a group of (rounded) ties, exactly as
    ``SimpleSearcher``/``SearchCollection`` report them.
    """
    import numpy as np

    if not scores:
        return []
    f32 = np.float32
    rounded = (np.floor(np.asarray(scores, dtype=np.float32).astype(np.float64) * 10000.0 + 0.5) / 10000.0).astype(np.float32)
    out = rounded.tolist()
    step, eps = f32(1e-4), f32(1e-6)
    # fast check: if every consecutive gap is clearly larger than 1e-4, nothing to adjust
    gaps = rounded[:-1] - rounded[1:]
    if not np.any(gaps <= step):
        return out
    prev = f32(rounded[0])
    dup = 0
    for i in range(1, len(out)):
        cur = f32(rounded[i])
        if f32(prev - cur) > step:
            dup = 0
        else:
            dup += 1
            cur = f32(cur - f32(eps * f32(dup)))
        out[i] = float(cur)
        prev = cur
    return out


def _clean_query(text: str) -> str:
    # Lucene analysis copes with anything, but the TSV topic files of the Java fallback need one line per query
    return " ".join(text.split())


class BM25Retriever:
    """BM25 (optionally + RM3 or Rocchio) over a Lucene index built by :meth:`build` or by Anserini/pyserini.

    Args:
        index_dir: a Lucene index directory (positions + docvectors + raw documents for RM3/Rocchio and ``doc``).
        k1: BM25 ``k1`` (default 0.9, Anserini's).
        b: BM25 ``b`` (default 0.4).
        rm3: RM3 pseudo-relevance feedback (needs docvectors).
        rm3_params: ``fb_terms`` (10), ``fb_docs`` (10), ``original_query_weight`` (0.5), ``filter_terms`` (True).
        rocchio: Rocchio pseudo-relevance feedback (needs docvectors); not together with ``rm3``.
        rocchio_params: ``top_fb_terms``, ``top_fb_docs``, ``bottom_fb_terms``, ``bottom_fb_docs`` (10 each),
            ``alpha`` (1), ``beta`` (0.75), ``gamma`` (0), ``use_negative`` (False).
        max_query_terms: longer queries (e.g. expanded ones) are truncated, with a warning, so that Lucene's
            clause limit is never hit; the JVM-wide ``IndexSearcher.maxClauseCount`` is raised to fit.
        heap: JVM heap if this starts the JVM (default ``$RADCOT_JAVA_HEAP`` or ``2g``).

    Example:
        >>> bm25 = BM25Retriever("runs/demo-bm25", k1=0.9, b=0.4)          # doctest: +SKIP
        >>> hits = bm25.batch_search([Query("1", "tidal forces")], k=10)   # doctest: +SKIP
    """

    kind = "bm25"

    def __init__(self, index_dir: PathLike, k1: float = DEFAULT_K1, b: float = DEFAULT_B, rm3: bool = False,
                 rm3_params: Mapping[str, Any] | None = None, rocchio: bool = False,
                 rocchio_params: Mapping[str, Any] | None = None,
                 max_query_terms: int = DEFAULT_MAX_QUERY_TERMS, heap: str | None = None):
        self.index_dir = Path(index_dir)
        if not self.index_dir.is_dir():
            raise FileNotFoundError(f"BM25 index {self.index_dir} does not exist; build it with "
                                    f"`radcot index --collection PATH --index {self.index_dir}`")
        if not any(p.name.startswith("segments_") for p in self.index_dir.iterdir()):
            raise RetrievalIndexError(f"{self.index_dir} is not a Lucene index (no segments_N file); build it with "
                                      f"`radcot index --collection PATH --index {self.index_dir}`")
        if rm3 and rocchio:
            raise ValueError("choose one of rm3 and rocchio, not both")
        if not (k1 >= 0 and 0 <= b <= 1):
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        if max_query_terms < 1:
            raise ValueError(f"max_query_terms must be >= 1, got {max_query_terms}")
        self.k1, self.b = float(k1), float(b)
        self.rm3, self.rocchio = bool(rm3), bool(rocchio)
        self.rm3_params = {**RM3_DEFAULTS, **(rm3_params or {})}
        self.rocchio_params = {**ROCCHIO_DEFAULTS, **(rocchio_params or {})}
        for name, params, allowed in (("rm3_params", rm3_params, self.rm3_params),
                                      ("rocchio_params", rocchio_params, self.rocchio_params)):
            unknown = set(params or {}) - set(allowed)
            if unknown:
                raise ValueError(f"unknown {name} {sorted(unknown)}; known: {sorted(allowed)}")
        self.max_query_terms = int(max_query_terms)
        self.heap = heap
        self.meta = self._read_meta(self.index_dir)
        check_index_files(self.index_dir, self.meta)
        self._lock = threading.Lock()
        self._j: dict[str, Any] | None = None      # Java objects for the fast path, opened lazily
        self._simple = None                         # io.anserini.search.SimpleSearcher, opened lazily
        self._ids: dict[int, str] = {}              # Lucene doc number -> external doc id (cache)
        self._fast_checked = False                  # the fast path agreed with SimpleSearcher on one query

    # ------------------------------------------------------------------------------------------ metadata

    @staticmethod
    def _read_meta(index_dir: Path) -> dict:
        return read_index_meta(index_dir)

    @property
    def config(self) -> dict:
        """The retriever's parameters as a JSON-serialisable dict (saved next to runs and datasets)."""
        cfg: dict[str, Any] = {"kind": self.kind, "index_dir": str(self.index_dir), "k1": self.k1, "b": self.b,
                               "rm3": self.rm3, "rocchio": self.rocchio, "max_query_terms": self.max_query_terms}
        if self.rm3:
            cfg["rm3_params"] = dict(self.rm3_params)
        if self.rocchio:
            cfg["rocchio_params"] = dict(self.rocchio_params)
        return cfg

    @property
    def num_docs(self) -> int:
        """Number of documents in the index."""
        return int(self._java()["reader"].numDocs())

    def __repr__(self) -> str:
        extra = ", rm3=True" if self.rm3 else ", rocchio=True" if self.rocchio else ""
        return f"BM25Retriever({str(self.index_dir)!r}, k1={self.k1}, b={self.b}{extra})"

    # ------------------------------------------------------------------------------------------ building

    @classmethod
    def build(cls, collection: PathLike | Iterable[Doc], index_dir: PathLike, threads: int = DEFAULT_BUILD_THREADS,
              show_progress: bool | None = True, heap: str | None = None, overwrite: bool = False,
              **params) -> "BM25Retriever":
        """Index a collection with Anserini's ``IndexCollection`` (positions, docvectors, raw documents).

        Documents are streamed from ``collection`` into temporary JsonCollection files (``{"id", "contents"}``,
        contents = title + newline + text as :attr:`Doc.contents`), one per thread, and indexed in this
        process's JVM with Anserini's default English analyzer (Porter stemming, stopwords removed). The index
        is written to a temporary directory and renamed into place, so an interrupted build leaves nothing
        half-written. An existing complete index built from the same (unchanged) collection is reused.

        Args:
            collection: anything :func:`radcot.data.readers.read_corpus` reads (BEIR dir, JsonCollection,
                MS MARCO TSV), or an iterable of :class:`Doc`.
            index_dir: output directory.
            threads: indexing threads (default 2).
            show_progress: progress bar while streaming documents (None: from the log level).
            heap: JVM heap (``-Xmx``) if this call starts the JVM.
            overwrite: rebuild even if a matching index exists.
            **params: passed to the constructor of the returned retriever (``k1``, ``b``, ``rm3``...).

        Returns:
            A :class:`BM25Retriever` on the new index.

        Example:
            >>> bm25 = BM25Retriever.build("../shared/data/vaswani", "runs/vaswani-bm25")  # doctest: +SKIP
        """
        index_dir = Path(index_dir)
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        fingerprint = collection_fingerprint(collection)
        if cls._reusable(index_dir, collection, overwrite):
            return cls(index_dir, heap=heap, **params)
        from radcot.java import start_jvm

        start_jvm(heap)
        t0 = time.time()
        index_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_build_dirs(index_dir)
        # the JsonCollection copy goes next to the index (same disk); it is deleted however the build ends
        # (an exception, Ctrl-C or SIGTERM); a SIGKILLed build's copy is removed by the next build
        # (made inside the try: a signal just after mkdtemp must not leave it behind, as a flaky test once showed)
        tmp = None
        try:
            with sigterm_as_interrupt():
                tmp = Path(tempfile.mkdtemp(prefix=build_temp_prefix(index_dir, "jsoncoll"), dir=index_dir.parent))
                n = _write_json_collection(collection, tmp / "collection", threads, show_progress)
                indexed = cls._index_collection(collection, tmp / "collection", index_dir, n, threads, heap,
                                                fingerprint, t0)
        except BaseException:
            remove_own_build_dirs(index_dir)  # the half-written index too, even while an abandoned writer runs on
            raise
        finally:
            if tmp is not None:
                rmtree_retry(tmp)
        logger.info("indexed %d documents in %.1f s", indexed, time.time() - t0)
        return cls(index_dir, heap=heap, **params)

    @classmethod
    def _reusable(cls, index_dir: Path, collection, overwrite: bool) -> bool:
        """Whether ``index_dir`` is a complete, undamaged index of the same collection (by content).

        Refuses to replace files radcot did not write.
        """
        if index_dir.exists() and not index_dir.is_dir():
            raise FileExistsError(f"{index_dir} exists and is not a directory; choose another --index path")
        if index_dir.is_dir() and not overwrite and any(index_dir.iterdir()) and not (index_dir / META_FILE).is_file():
            raise FileExistsError(f"{index_dir} exists and was not built by radcot; refusing to replace it. "
                                  f"Choose another --index path, or pass overwrite=True (--overwrite)")
        if overwrite or not index_dir.is_dir() or not (index_dir / META_FILE).is_file():
            return False
        meta = cls._read_meta(index_dir)
        if not isinstance(collection, (str, os.PathLike)) or meta.get("kind") != cls.kind:
            return False
        if not same_collection(meta.get("collection_fingerprint"), collection):
            logger.info("rebuilding %s: it was built from other documents than %s", index_dir, collection)
            return False
        why = damaged(index_dir, meta)
        if why:
            logger.warning("rebuilding %s: %s", index_dir, why)
            return False
        logger.info("reusing BM25 index %s (built %s from the same documents)", index_dir, meta.get("created"))
        return True

    @classmethod
    def _index_collection(cls, collection, coll_dir: Path, index_dir: Path, n: int, threads: int, heap: str | None,
                          fingerprint: str | None, t0: float) -> int:
        """Anserini ``IndexCollection`` over ``coll_dir`` into a temp dir renamed to ``index_dir``; returns #indexed."""
        from radcot.java import autoclass, java_heap
        from radcot.utils import atomic_dir

        buffer_mb = max(64, min(2048, _heap_mb(java_heap(heap)) // 4))
        args = ["-collection", "JsonCollection", "-input", str(coll_dir), "-generator",
                "DefaultLuceneDocumentGenerator", "-threads", str(threads), "-storePositions", "-storeDocvectors",
                "-storeRaw", "-memoryBuffer", str(buffer_mb), "-quiet"]
        with atomic_dir(index_dir) as out:
            logger.info("indexing %d documents with Anserini IndexCollection (%d threads) into %s", n, threads, index_dir)
            parser_args = autoclass("io.anserini.index.IndexCollection$Args")()
            _parse_java_args(parser_args, args + ["-index", str(out)])
            indexer = autoclass("io.anserini.index.IndexCollection")(parser_args)
            try:
                # in a worker thread: Ctrl-C/SIGTERM interrupt the wait at once, and the temp dirs are removed
                run_interruptibly(indexer.run, name="radcot-index")
            except Exception as e:  # noqa: BLE001 - jnius wraps Java exceptions
                raise RetrievalIndexError(f"Anserini IndexCollection failed on {index_dir} ({type(e).__name__}: {e}); "
                                          "if it ran out of memory, raise the heap (--heap 4g / RADCOT_JAVA_HEAP)") from e
            meta = _index_meta(cls.kind, indexer.getCounters(), collection, n, threads, fingerprint, index_dir, t0)
            meta["files"] = index_files(out)
            (out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return meta["num_docs"]

    # ------------------------------------------------------------------------------------------ Java side

    def _java(self) -> dict[str, Any]:
        """The Lucene reader and searcher, opened once (after checking every index file) and the query tools."""
        if self._j is not None:
            return self._j
        with self._lock:
            if self._j is not None:
                return self._j
            from radcot.java import autoclass, ensure_max_clause_count, start_jvm

            start_jvm(self.heap)
            from jnius import JavaException, cast

            ensure_max_clause_count(self.max_query_terms + 1024)
            reader = _open_lucene_reader(self.index_dir, self.meta)
            searcher = autoclass("org.apache.lucene.search.IndexSearcher")(cast("org.apache.lucene.index.IndexReader", reader))
            searcher.setSimilarity(autoclass("org.apache.lucene.search.similarities.BM25Similarity")(self.k1, self.b))
            self._j = {
                "reader": reader,
                "searcher": searcher,
                "analyzer": autoclass("io.anserini.analysis.DefaultEnglishAnalyzer").newDefaultInstance(),
                "generator": autoclass("io.anserini.search.query.BagOfWordsQueryGenerator")(),
                "sort": autoclass("io.anserini.search.SearchCollection").BREAK_SCORE_TIES_BY_DOCID,
                # Jackson writes a TopDocs' public fields as JSON (declared type TopDocs: not the sort description)
                "top_docs_json": autoclass("com.fasterxml.jackson.databind.ObjectMapper")().writerFor(
                    autoclass("java.lang.Class").forName("org.apache.lucene.search.TopDocs")),
                "JavaException": JavaException,
            }
            return self._j

    def _simple_searcher(self):
        """Anserini's ``SimpleSearcher`` (what pyserini's ``LuceneSearcher`` wraps), configured like this retriever."""
        if self._simple is not None:
            return self._simple
        self._java()  # checks the index files once, naming a damaged one (before taking the lock it takes too)
        with self._lock:
            if self._simple is None:
                from radcot.java import autoclass, ensure_max_clause_count, start_jvm

                start_jvm(self.heap)
                ensure_max_clause_count(self.max_query_terms + 1024)
                from jnius import JavaException

                try:
                    s = autoclass("io.anserini.search.SimpleSearcher")(str(self.index_dir.resolve()))
                except JavaException as e:
                    raise IndexDamagedError(f"Anserini cannot open the index {self.index_dir} ({_java_message(e)}); "
                                            f"rebuild it: {rebuild_hint(self.index_dir, self.meta)}") from None
                s.set_bm25(self.k1, self.b)
                if self.rm3 or self.rocchio:
                    if not s.reader.getTermVectors(0):
                        raise RetrievalIndexError(f"{'RM3' if self.rm3 else 'Rocchio'} needs document vectors, which index "
                                          f"{self.index_dir} does not store; rebuild it with `radcot index`")
                if self.rm3:
                    p = self.rm3_params
                    s.set_rm3(None, int(p["fb_terms"]), int(p["fb_docs"]), float(p["original_query_weight"]), False,
                              bool(p["filter_terms"]))
                if self.rocchio:
                    p = self.rocchio_params
                    s.set_rocchio(None, int(p["top_fb_terms"]), int(p["top_fb_docs"]), int(p["bottom_fb_terms"]),
                                  int(p["bottom_fb_docs"]), float(p["alpha"]), float(p["beta"]), float(p["gamma"]),
                                  False, bool(p["use_negative"]))
                self._simple = s
        return self._simple

    def _prepare(self, query_id: str, text: str) -> str:
        text = _clean_query(text)
        # each term needs at least 2 characters (itself + a separator): this bounds the number of clauses
        limit = 2 * self.max_query_terms
        if len(text) > limit:
            cut = text.rfind(" ", 0, limit)
            logger.warning("query %s has %d characters; truncated to %d so that it stays under %d unique terms "
                           "(raise max_query_terms to keep more)", query_id, len(text), cut if cut > 0 else limit,
                           self.max_query_terms)
            text = text[:cut if cut > 0 else limit]
        return text

    def _search_fast(self, query_id: str, text: str, k: int) -> list[tuple[str, float]]:
        """One query through Lucene's public search API; all hits to Python in one call. BM25 only.

        Lucene returns the hits as ``TopFieldDocs`` (public fields: ``totalHits``, ``scoreDocs`` of ``FieldDoc`` with
        ``doc``, ``score`` and the sort values, the second being the external id's ``BytesRef``). Reading them one
        Java object at a time costs more than the search; instead Jackson (Anserini's JSON library) serialises the
        ``TopDocs`` to JSON in one call, which :meth:`_read_top_docs` parses by field name. Checked on every query:
        the hits must number what Lucene counted (a serialisation that changed shape raises, it never passes for
        "no results"); the first query with hits is also compared with Anserini's ``SimpleSearcher``.

        Raises:
            RetrievalIndexError: the hits disagree with Lucene's count or with ``SimpleSearcher``.
        """
        j = self._java()
        text = self._prepare(query_id, text)
        try:
            query = j["generator"].buildQuery(CONTENTS_FIELD, j["analyzer"], text)
            top = j["searcher"].search(query, int(k), j["sort"], True)
            payload = j["top_docs_json"].writeValueAsString(top)
        except j["JavaException"] as e:
            raise RadcotError(f"Lucene failed on query {query_id} ({len(text)} characters): {_java_message(e)}") from e
        hits, total, exact = self._read_top_docs(payload)
        expected = min(int(k), total)
        if len(hits) < expected or (exact and len(hits) != expected):
            raise RetrievalIndexError(
                f"BM25 fast path on {self.index_dir}: read {len(hits)} hits for query {query_id!r} where Lucene found "
                f"{expected} (k={k}); Lucene's TopDocs as JSON has changed shape (Lucene {_lucene_version()}). Use "
                f"batch_search(..., fast=False) and report this to radcot")
        ranked = self._hits_to_ids(hits)
        if ranked and not self._fast_checked:
            self._check_fast_path(query_id, text, ranked)
        return ranked

    def _read_top_docs(self, payload: str) -> tuple[list[tuple[int, str, dict]], int, bool]:
        """``(hits, total, exact)`` from Jackson's JSON of a ``TopFieldDocs``: each hit is ``(Lucene doc number,
        score as written, BytesRef of the id)``; ``total`` is Lucene's hit count, ``exact`` whether it is exact.

        Raises:
            RetrievalIndexError: a field is missing (Lucene's public fields were renamed).
        """
        try:
            top = json.loads(payload, parse_float=str)  # 5x faster than json's own float parsing; float() below
            total = top["totalHits"]
            hits = [(h["doc"], h["score"], h["fields"][1]) for h in top["scoreDocs"]]
            return hits, int(total["value"]), total["relation"] == "EQUAL_TO"
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise RetrievalIndexError(
                f"BM25 fast path on {self.index_dir}: Lucene's TopDocs as JSON lacks {type(e).__name__} {e} (Lucene "
                f"{_lucene_version()}: its public fields changed?). Use batch_search(..., fast=False) and report this "
                f"to radcot") from None

    def _hits_to_ids(self, hits: list[tuple[int, str, dict]]) -> list[tuple[str, float]]:
        ids = self._ids
        docids = []
        for lucene_doc, _, ref in hits:
            did = ids.get(lucene_doc)
            if did is None:
                start = int(ref["offset"])
                did = base64.b64decode(ref["bytes"])[start:start + int(ref["length"])].decode("utf-8")
                ids[lucene_doc] = did
            docids.append(did)
        scores = _adjust_ties([float(s) for _, s, _ in hits])
        return list(zip(docids, scores))

    def _check_fast_path(self, query_id: str, text: str, ranked: list[tuple[str, float]], n: int = 10) -> None:
        """Compare the fast path's top ``n`` for one query with Anserini's ``SimpleSearcher`` (once per retriever).

        Raises:
            RetrievalIndexError: different doc ids, order or scores.
        """
        n = min(n, len(ranked))
        reference = [(h.docid, float(h.score)) for h in self._simple_searcher().search(text, n)]
        mine = ranked[:n]
        same = len(reference) == n and all(a == c and abs(b - d) <= 1e-3 * max(1.0, abs(d))
                                           for (a, b), (c, d) in zip(mine, reference))
        if not same:
            raise RetrievalIndexError(
                f"BM25 fast path on {self.index_dir} disagrees with Anserini's SimpleSearcher on query {query_id!r}: "
                f"fast {mine[:3]}... vs SimpleSearcher {reference[:3]}...; Lucene's TopDocs or its JSON form has "
                f"probably changed (Lucene {_lucene_version()}). Use batch_search(..., fast=False) and report this")
        self._fast_checked = True

    def _lucene_count(self, text: str) -> int:
        """How many documents match the (prepared) query text, by Lucene's own count (BM25, no feedback)."""
        j = self._java()
        query = j["generator"].buildQuery(CONTENTS_FIELD, j["analyzer"], text)
        return int(j["searcher"].count(query))

    def _search_java_run(self, queries: Sequence[Query], k: int, threads: int) -> dict[str, list[tuple[str, float]]]:
        """Anserini ``SearchCollection`` writes the run in Java (used with RM3/Rocchio)."""
        from radcot.java import autoclass, ensure_max_clause_count, start_jvm

        start_jvm(self.heap)
        ensure_max_clause_count(self.max_query_terms + 1024)
        with tempfile.TemporaryDirectory(prefix="radcot-search-") as tmp:
            topics, out = Path(tmp) / "topics.tsv", Path(tmp) / "run.trec"
            prepared = self._write_topics(queries, topics)
            jargs = autoclass("io.anserini.search.SearchCollection$Args")()
            _parse_java_args(jargs, self._search_collection_args(topics, out, k, threads))
            sc = autoclass("io.anserini.search.SearchCollection")(jargs)
            try:
                sc.run()
            finally:
                sc.close()
            results = _read_java_run(out, queries)
        self._check_empty_results(results, prepared)
        return results

    def _write_topics(self, queries: Sequence[Query], topics: Path) -> dict[str, str]:
        """The TSV topics file for ``SearchCollection``; returns ``{qid: prepared text}`` of the non-empty queries."""
        prepared = {}
        with open(topics, "w", encoding="utf-8") as f:
            for q in queries:
                if "\t" in q.query_id or "\n" in q.query_id or " " in q.query_id:
                    raise DataFormatError("<queries>", None, "query ids without whitespace", repr(q.query_id))
                text = self._prepare(q.query_id, q.text)
                if text:  # an empty query matches nothing: its (empty) result list is already in place
                    f.write(f"{q.query_id}\t{text}\n")
                    prepared[q.query_id] = text
        return prepared

    def _search_collection_args(self, topics: Path, out: Path, k: int, threads: int) -> list[str]:
        args = ["-index", str(self.index_dir.resolve()), "-topics", str(topics), "-topicReader", "TsvString",
                "-output", str(out), "-bm25", "-bm25.k1", repr(self.k1), "-bm25.b", repr(self.b), "-hits", str(k),
                "-threads", str(threads), "-parallelism", "1", "-runtag", "radcot", "-quiet"]
        if self.rm3:
            p = self.rm3_params
            args += ["-rm3", "-rm3.fbTerms", str(int(p["fb_terms"])), "-rm3.fbDocs", str(int(p["fb_docs"])),
                     "-rm3.originalQueryWeight", repr(float(p["original_query_weight"]))]
            if not p["filter_terms"]:
                args.append("-rm3.noTermFilter")
        if self.rocchio:
            p = self.rocchio_params
            args += ["-rocchio", "-rocchio.topFbTerms", str(int(p["top_fb_terms"])),
                     "-rocchio.topFbDocs", str(int(p["top_fb_docs"])),
                     "-rocchio.bottomFbTerms", str(int(p["bottom_fb_terms"])),
                     "-rocchio.bottomFbDocs", str(int(p["bottom_fb_docs"])),
                     "-rocchio.alpha", repr(float(p["alpha"])), "-rocchio.beta", repr(float(p["beta"])),
                     "-rocchio.gamma", repr(float(p["gamma"]))]
            if p["use_negative"]:
                args.append("-rocchio.useNegative")
        return args

    def _check_empty_results(self, results: dict[str, list], prepared: dict[str, str]) -> None:
        """A non-empty query with no hits must be one Lucene itself matches nothing for (else raise)."""
        for qid, text in prepared.items():
            if not results.get(qid) and self._lucene_count(text) > 0:
                raise RetrievalIndexError(
                    f"Anserini SearchCollection returned no hits for query {qid!r} on {self.index_dir}, but Lucene "
                    f"matches {self._lucene_count(text)} documents; the run file could not be read correctly")

    # ------------------------------------------------------------------------------------------ public search

    def search(self, query: str | Query, k: int = 10, query_id: str = "q") -> list[ScoredDoc]:
        """Search one query.

        Args:
            query: the query text (or a :class:`Query`, whose id is then used).
            k: number of hits.
            query_id: id put into the returned records when ``query`` is a string.

        Returns:
            Up to ``k`` :class:`ScoredDoc`, best first (an empty or all-stopword query returns ``[]``).

        Example:
            >>> BM25Retriever("runs/vaswani-bm25").search("electron spin", k=2)  # doctest: +SKIP
            [ScoredDoc(query_id='q', doc_id='9281', score=11.2), ScoredDoc(query_id='q', doc_id='17', score=9.8)]
        """
        if isinstance(query, Query):
            query_id, query = query.query_id, query.text
        k = check_k(k)
        if self.rm3 or self.rocchio:
            return self.batch_search([Query(query_id, query)], k=k, threads=1)[query_id]
        return [ScoredDoc(query_id, d, s) for d, s in self._search_fast(query_id, query, k)]

    def batch_search(self, queries: Sequence[Query] | Mapping[str, str], k: int = 1000, threads: int = 2,
                     fast: bool = True, show_progress: bool | None = False) -> dict[str, list[ScoredDoc]]:
        """Search many queries.

        Args:
            queries: :class:`Query` records or ``{qid: text}``.
            k: hits per query.
            threads: search threads.
            fast: the fast path (default). ``False`` goes through Anserini ``SimpleSearcher.batch_search``
                and converts each hit as pyserini does (the reference the fast path is tested against).
            show_progress: progress bar (fast path).

        Returns:
            ``{qid: [ScoredDoc, ...]}`` with every query id present (``[]`` when nothing matched).
        """
        qs = as_queries(queries)
        k = check_k(k)
        if not fast:
            return self._batch_search_simple(qs, k, threads)
        return {qid: [ScoredDoc(qid, d, s) for d, s in hits]
                for qid, hits in self._ranked(qs, k, threads, show_progress).items()}

    def run(self, queries: Sequence[Query] | Mapping[str, str], k: int = 1000, threads: int = 2,
            show_progress: bool | None = None) -> Run:
        """A TREC run ``{qid: {docid: score}}`` at depth ``k``, fast (see the module docstring).

        Example:
            >>> from radcot.data.readers import read_queries, write_run
            >>> run = bm25.run(read_queries("../shared/data/vaswani"), k=1000)   # doctest: +SKIP
            >>> write_run(run, "runs/vaswani.bm25.trec")                         # doctest: +SKIP
        """
        qs = as_queries(queries)
        k = check_k(k)
        return {qid: dict(hits) for qid, hits in self._ranked(qs, k, threads, show_progress).items()}

    def _ranked(self, qs: list[Query], k: int, threads: int, show_progress) -> dict[str, list[tuple[str, float]]]:
        from radcot.utils import progress

        seen: set[str] = set()
        for q in qs:
            if q.query_id in seen:
                raise DataFormatError("<queries>", None, "unique query ids", f"query id {q.query_id!r} twice")
            seen.add(q.query_id)
        if self.rm3 or self.rocchio:
            return self._search_java_run(qs, k, max(1, threads))
        self._java()
        out: dict[str, list[tuple[str, float]]] = {}
        with progress(total=len(qs), desc="BM25", unit="q", show_progress=show_progress) as bar:
            if threads <= 1 or len(qs) < 2:
                for q in qs:
                    out[q.query_id] = self._search_fast(q.query_id, q.text, k)
                    bar.update(1)
            else:
                self._search_threads(qs, k, threads, out, bar)
        return out

    def _search_threads(self, qs: list[Query], k: int, threads: int, out: dict, bar) -> None:
        """Worker threads over a shared queue; each detaches from the JVM when done (pyjnius requires it)."""
        import queue

        from jnius import detach

        todo: "queue.SimpleQueue[Query]" = queue.SimpleQueue()
        for q in qs:
            todo.put(q)
        errors: list[BaseException] = []
        done = queue.SimpleQueue()

        def work():
            try:
                while not errors:
                    try:
                        q = todo.get_nowait()
                    except queue.Empty:
                        return
                    out[q.query_id] = self._search_fast(q.query_id, q.text, k)
                    done.put(1)
            except BaseException as e:  # noqa: BLE001 - re-raised in the calling thread
                errors.append(e)
            finally:
                detach()

        workers = [threading.Thread(target=work, name=f"radcot-bm25-{i}", daemon=True)
                   for i in range(min(threads, len(qs)))]
        for w in workers:
            w.start()
        finished = 0
        while any(w.is_alive() for w in workers) or not done.empty():
            try:
                done.get(timeout=0.2)
                finished += 1
                bar.update(1)
            except queue.Empty:
                pass
        for w in workers:
            w.join()
        if errors:
            raise errors[0]
        # results keep the queries' order
        ordered = {q.query_id: out.pop(q.query_id) for q in qs}
        out.update(ordered)

    def _batch_search_simple(self, qs: list[Query], k: int, threads: int) -> dict[str, list[ScoredDoc]]:
        from radcot.java import autoclass

        s = self._simple_searcher()
        JArrayList = autoclass("java.util.ArrayList")
        texts, ids = JArrayList(), JArrayList()
        for q in qs:
            texts.add(self._prepare(q.query_id, q.text))
            ids.add(q.query_id)
        results = s.batch_search(texts, ids, int(k), int(threads))
        out: dict[str, list[ScoredDoc]] = {q.query_id: [] for q in qs}
        for entry in results.entrySet().toArray():
            qid = entry.getKey()
            out[qid] = [ScoredDoc(qid, h.docid, float(h.score)) for h in entry.getValue()]
        return out

    def write_run(self, queries: Sequence[Query] | Mapping[str, str], path: PathLike, k: int = 1000,
                  threads: int = 2, tag: str = "radcot-bm25", show_progress: bool | None = None) -> Run:
        """:meth:`run` and write it as a TREC run file (atomically); returns the run."""
        from radcot.data.readers import write_run

        run = self.run(queries, k=k, threads=threads, show_progress=show_progress)
        write_run(run, path, tag=tag)
        return run

    # ------------------------------------------------------------------------------------------ documents

    def doc(self, doc_id: str) -> Doc | None:
        """The stored document ``doc_id`` (from the raw JSON stored at indexing), or ``None`` if absent.

        Example:
            >>> bm25.doc("1").text[:30]   # doctest: +SKIP
            'compact memories have flexibl'
        """
        raw = self._simple_searcher().doc_raw(str(doc_id))
        if raw is None:
            return None
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError:
            return Doc(str(doc_id), raw)
        contents = obj.get("contents", obj.get("text", ""))
        title = obj.get("title", "") or ""
        text = obj.get("text")
        if text is None:
            text = contents[len(title) + 1:] if title and contents.startswith(title + "\n") else contents
        return Doc(str(obj.get("id", doc_id)), text, title)

    def close(self) -> None:
        """Release the Lucene readers (the JVM keeps running)."""
        with self._lock:
            if self._j is not None:
                self._j["reader"].close()
                self._j = None
            if self._simple is not None:
                self._simple.close()
                self._simple = None
            self._ids = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ---------------------------------------------------------------------------------------------- helpers


def _java_message(e) -> str:
    """A pyjnius ``JavaException`` in one short line: the Java class and its message."""
    cls = str(getattr(e, "classname", "") or "").rsplit(".", 1)[-1]
    msg = " ".join(str(getattr(e, "innermessage", None) or e).split())
    return f"{cls}: {msg}"[:300] if cls else msg[:300]


def _open_lucene_reader(index_dir: Path, meta: dict):
    """A ``DirectoryReader`` on ``index_dir`` after checking that no file of its latest commit is damaged.

    Each file's Lucene footer (magic and checksum header, written last) is read with the public
    ``CodecUtil.retrieveChecksum``: a truncated or overwritten file fails here, named, instead of in the middle of
    a search. This is a few small reads per file (not a full ``CheckIndex``).

    Raises:
        IndexDamagedError: the commit or a file cannot be read; names it and the rebuild command.
    """
    from jnius import JavaException

    from radcot.java import autoclass

    Paths = autoclass("java.nio.file.Paths")
    directory = autoclass("org.apache.lucene.store.FSDirectory").open(Paths.get(str(index_dir.resolve())))
    hint = rebuild_hint(index_dir, meta)
    try:
        infos = autoclass("org.apache.lucene.index.SegmentInfos").readLatestCommit(directory)
    except JavaException as e:
        raise IndexDamagedError(f"Lucene cannot read the commit point (segments_N) of {index_dir} ({_java_message(e)});"
                                f" rebuild the index: {hint}") from None
    CodecUtil = autoclass("org.apache.lucene.codecs.CodecUtil")
    READONCE = autoclass("org.apache.lucene.store.IOContext").READONCE
    for name in sorted(str(n) for n in infos.files(True).toArray()):
        try:
            stream = directory.openInput(name, READONCE)
            try:
                CodecUtil.retrieveChecksum(stream)
            finally:
                stream.close()
        except JavaException as e:
            raise IndexDamagedError(f"index file {index_dir / name} is damaged ({_java_message(e)}); rebuild the "
                                    f"index: {hint}") from None
    try:
        return autoclass("org.apache.lucene.index.DirectoryReader").open(directory)
    except JavaException as e:
        raise IndexDamagedError(f"Lucene cannot open the index {index_dir} ({_java_message(e)}); rebuild the index: "
                                f"{hint}") from None


def _parse_java_args(args_obj, argv: list[str]) -> None:
    """Fill an Anserini ``Args`` object with args4j, as its ``main`` does (without ``System.exit``)."""
    from radcot.java import autoclass

    from jnius import JavaException

    parser = autoclass("org.kohsuke.args4j.CmdLineParser")(args_obj, autoclass("org.kohsuke.args4j.ParserProperties").defaults())
    try:
        parser.parseArgument(*argv)
    except JavaException as e:
        raise RadcotError(f"Anserini rejected the arguments {argv}: {e}") from e


def _write_json_collection(collection, coll_dir: Path, threads: int, show_progress: bool | None) -> int:
    """Stream the documents into ``threads`` JsonCollection files (``{"id", "contents"[, "title"]}``); returns #docs.

    Raises:
        DataFormatError: the collection holds no document.
    """
    from radcot.utils import progress

    coll_dir.mkdir(parents=True)
    files = [open(coll_dir / f"docs{i:02d}.jsonl", "w", encoding="utf-8") for i in range(threads)]
    n = 0
    try:
        with progress(desc="writing JsonCollection", unit="doc", show_progress=show_progress) as bar:
            for doc in iter_docs(collection):
                rec = {"id": doc.doc_id, "contents": doc.contents}
                if doc.title:
                    rec["title"] = doc.title
                files[n % threads].write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
                if n % 2000 == 0:
                    bar.update(2000)
            bar.update(n % 2000)
    finally:
        for f in files:
            f.close()
    if n == 0:
        raise DataFormatError(str(collection) if isinstance(collection, (str, os.PathLike)) else "<documents>",
                              None, "at least one document", "none", "Check the collection path and format")
    return n


def _index_meta(kind: str, counters, collection, n: int, threads: int, fingerprint: str | None, index_dir: Path,
                t0: float) -> dict:
    """``radcot_index.json`` of a finished build, from Anserini's counters (raises if it reported errors)."""
    from radcot.utils import config_hash

    indexed = int(counters.indexed.get())
    empty, unindexable, skipped, errors = (int(getattr(counters, c).get()) for c in
                                           ("empty", "unindexable", "skipped", "errors"))
    if errors:
        raise RetrievalIndexError(f"Anserini reported {errors} errors while indexing {n} documents into {index_dir}")
    if empty or unindexable or skipped:
        logger.warning("%d of %d documents were not indexed (empty: %d, unindexable: %d, skipped: %d); "
                       "they can never be retrieved", empty + unindexable + skipped, n, empty, unindexable, skipped)
    meta = {
        "kind": kind, "format": "lucene", "complete": True, "num_docs": indexed,
        "documents_read": n, "not_indexed": empty + unindexable + skipped,
        "collection": str(collection) if isinstance(collection, (str, os.PathLike)) else None,
        "collection_fingerprint": fingerprint, "contents": "title + '\\n' + text",
        "analyzer": "anserini DefaultEnglishAnalyzer (porter, stopwords)", "stored": ["positions", "docvectors", "raw"],
        "threads": threads, "anserini_jar": _jar_name(), "seconds": round(time.time() - t0, 2),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    meta["config_hash"] = config_hash({k: meta[k] for k in ("collection_fingerprint", "contents", "analyzer")})
    return meta


def _read_java_run(path: Path, queries: Sequence[Query]) -> dict[str, list[tuple[str, float]]]:
    """The TREC run ``SearchCollection`` wrote, as ``{qid: [(doc_id, score), ...]}`` for exactly ``queries``."""
    results: dict[str, list[tuple[str, float]]] = {q.query_id: [] for q in queries}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if len(fields) != 6 or fields[0] not in results:
                raise RetrievalIndexError(f"Anserini SearchCollection wrote an unexpected line {lineno} in {path}: "
                                          f"{line.strip()[:120]!r} (expected 'qid Q0 docid rank score tag' of a "
                                          "known query)")
            results[fields[0]].append((fields[2], float(fields[4])))
    return results


def _lucene_version() -> str:
    try:
        from radcot.java import autoclass

        return str(autoclass("org.apache.lucene.util.Version").LATEST.toString())
    except Exception:  # noqa: BLE001 - informational only
        return "unknown"


def _jar_name() -> str | None:
    try:
        from radcot.java import anserini_jar

        return anserini_jar().name
    except Exception:  # noqa: BLE001 - informational only
        return None
