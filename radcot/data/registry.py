"""Named datasets and local directories, resolved to files (corpus, queries, qrels) and an index.

A dataset is named in one of three ways, tried in this order:

1. radcot's own MS MARCO names (with pyserini's prebuilt ``msmarco-v1-passage`` index):

   ====================================  ===============================  ===============================
   name                                   pyserini topics/qrels            local file names (``data_dir``)
   ====================================  ===============================  ===============================
   ``msmarco-passage/dev-subset``         ``msmarco-passage-dev-subset``   ``topics.msmarco-passage.dev-subset.txt``, ``qrels.msmarco-passage.dev-subset.txt``
   ``msmarco-passage/trec-dl-2019``       ``dl19-passage``                 ``topics.dl19-passage.txt``, ``qrels.dl19-passage.txt``
   ``msmarco-passage/trec-dl-2020``       ``dl20``                         ``topics.dl20.txt``, ``qrels.dl20-passage.txt``
   ====================================  ===============================  ===============================

   Resolution: an explicit ``data_dir`` (or ``$RADCOT_MSMARCO_DIR``) holding the files above; else pyserini's
   bundled topics/qrels (online). A ``data_dir`` may also hold MS MARCO's ``collection.tsv`` (``pid \\t passage``)
   and ``queries.train.tsv``: they become the dataset's corpus and training queries. The index: an explicit
   ``index`` directory (or ``$RADCOT_MSMARCO_INDEX``); else, when ``data_dir`` holds ``collection.tsv``, none (the
   pipeline builds a BM25 index from that collection); else pyserini's prebuilt ``msmarco-v1-passage``
   (downloaded once, ~2 GB). Offline without them, :class:`~radcot.records.OfflineResourceError` says what to
   download and where to put it.

2. a local path: a directory in BEIR layout (``corpus.jsonl``, ``queries.jsonl``, ``qrels/test.tsv``), or a
   queries file.

3. any ir_datasets id (``vaswani``, ``beir/scifact/test``, ``msmarco-passage/trec-dl-2019/judged``...; ``irds:ID``
   forces this route, e.g. for the names of 1.), through ir_datasets' cache and checksums
   (:mod:`radcot.data.irds`).

An ``index`` given for a dataset with a corpus must have been built from that corpus: a radcot index records
its collection's content fingerprint, and another collection's index is refused
(:class:`~radcot.data.fingerprint.IndexCollectionMismatchError`) instead of scoring the wrong documents.

Example:
    >>> from radcot.data.registry import load_dataset
    >>> ds = load_dataset("data/demo")  # doctest: +SKIP
    >>> len(ds.queries())  # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from radcot.records import OfflineResourceError, Qrel, Query, RadcotError


@dataclasses.dataclass(frozen=True)
class NamedSpec:
    topics_file: str
    qrels_file: str
    pyserini_topics: str
    pyserini_qrels: str
    prebuilt_index: str = "msmarco-v1-passage"


NAMED: dict[str, NamedSpec] = {
    "msmarco-passage/dev-subset": NamedSpec("topics.msmarco-passage.dev-subset.txt",
                                            "qrels.msmarco-passage.dev-subset.txt",
                                            "msmarco-passage-dev-subset", "msmarco-passage-dev-subset"),
    "msmarco-passage/trec-dl-2019": NamedSpec("topics.dl19-passage.txt", "qrels.dl19-passage.txt",
                                              "dl19-passage", "dl19-passage"),
    "msmarco-passage/trec-dl-2020": NamedSpec("topics.dl20.txt", "qrels.dl20-passage.txt", "dl20", "dl20-passage"),
}

_DOWNLOAD_HELP = (
    "Offline, download on a connected machine: the topics and qrels files {files} (from Anserini's "
    "tools/topics-and-qrels, or pyserini's bundled resources) into a directory DIR and pass it with "
    "--set params.msmarco_dir=DIR (the DL pipelines; dataset.data_dir in others; or set RADCOT_MSMARCO_DIR), and "
    "the prebuilt Lucene index with `python -c \"from pyserini.util import download_prebuilt_index; "
    "print(download_prebuilt_index('msmarco-v1-passage'))\"` (or build one with `radcot index "
    "--collection collection.tsv --index INDEX_DIR` from MS MARCO's collection.tsv, or put collection.tsv into "
    "DIR to have the pipeline index it) and pass its directory with "
    "--set params.index=INDEX_DIR (or set RADCOT_MSMARCO_INDEX)."
)


@dataclasses.dataclass
class Dataset:
    """Files of one evaluation dataset. ``corpus`` may be None (index-only, e.g. prebuilt MS MARCO)."""

    name: str
    queries_path: Path | None
    qrels_path: Path | None
    corpus: Path | None = None
    index: str | None = None  # a local index directory or a pyserini prebuilt index name
    train_queries_path: Path | None = None
    train_qrels_path: Path | None = None  # BEIR qrels/train.tsv: its query ids are the training queries
    _queries: list[Query] | None = dataclasses.field(default=None, repr=False)

    def queries(self) -> list[Query]:
        from radcot.data.readers import read_queries

        if self._queries is None:
            if self.queries_path is None:
                raise RadcotError(f"dataset {self.name} has no queries")
            self._queries = read_queries(self.queries_path)
        return self._queries

    def train_queries(self) -> list[Query]:
        from radcot.data.readers import read_queries

        if self.train_queries_path is not None:
            return read_queries(self.train_queries_path)
        if self.train_qrels_path is not None and self.queries_path is not None:
            from radcot.data.readers import read_qrels

            ids = {q.query_id for q in read_qrels(self.train_qrels_path)}
            return [q for q in self.queries() if q.query_id in ids]
        raise RadcotError(f"dataset {self.name} has no training queries (add train_queries.jsonl or "
                          f"qrels/train.tsv, or use k-fold splits / synthetic queries in the pipeline)")

    def qrels(self) -> list[Qrel]:
        from radcot.data.readers import check_qrels, read_qrels

        if self.qrels_path is None:
            raise RadcotError(f"dataset {self.name} has no qrels")
        qrels = read_qrels(self.qrels_path)
        check_qrels(qrels, self.queries(), source=str(self.qrels_path))
        return qrels

    def judged_queries(self) -> list[Query]:
        """Only the queries that have judgements (e.g. 43 of DL19's 200 topics)."""
        judged = {q.query_id for q in self.qrels()}
        return [q for q in self.queries() if q.query_id in judged]


def load_dataset(name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None = None,
                 index: str | os.PathLike | None = None) -> Dataset:
    """Resolve a named dataset, a local BEIR-layout directory or an ir_datasets id to a :class:`Dataset`.

    Args:
        name_or_path: a name from :data:`NAMED`, a directory (BEIR layout), or an ir_datasets id (``irds:`` prefix
            optional).
        data_dir: for named datasets, a directory holding the topics/qrels files (offline use).
        index: an index directory (or pyserini prebuilt name) to use instead of the default.

    Raises:
        IndexCollectionMismatchError: ``index`` is a radcot index built from other documents than the dataset's
            corpus (compared by content fingerprint).
        OfflineResourceError: a named dataset's files are missing and cannot be downloaded; says what to fetch.
    """
    dataset = _resolve(name_or_path, data_dir, index)
    _check_index_matches_corpus(dataset)
    return dataset


def _check_index_matches_corpus(dataset: Dataset) -> None:
    """A local index given for a dataset with a corpus must have been built from that corpus (by content)."""
    if dataset.corpus is not None and dataset.index and Path(dataset.index).is_dir():
        from radcot.data.fingerprint import check_index_collection

        check_index_collection(dataset.index, dataset.corpus)


def _resolve(name_or_path: str | os.PathLike, data_dir, index) -> Dataset:
    from radcot.data import irds

    name = str(name_or_path)
    _, explicit = irds.strip_prefix(name)
    if name in NAMED:
        return _load_named(name, data_dir, index)
    path = Path(name_or_path)
    if not explicit and (path.exists() or path.is_symlink()):
        return _load_local(path, index)
    if explicit or irds.is_irds_id(name):
        return _load_irds(name, data_dir, index)
    raise RadcotError(f"dataset {name!r} is neither a known name ({', '.join(NAMED)}), an ir_datasets id "
                      f"(https://ir-datasets.com; pip install ir_datasets), nor an existing directory")


def _load_irds(name: str, data_dir, index) -> Dataset:
    from radcot.data import irds

    if data_dir:
        raise RadcotError(f"dataset {name}: data_dir is for radcot's own MS MARCO names; ir_datasets ids are read from "
                          f"ir_datasets' cache ($IR_DATASETS_HOME, now {irds.home()})")
    files = irds.load(name, str(index) if index else None)
    return Dataset(name=files.name, queries_path=files.queries, qrels_path=files.qrels, corpus=files.corpus,
                   index=files.index)


def _load_local(path: Path, index) -> Dataset:
    """A BEIR-layout directory (or a single queries file)."""
    from radcot.data.readers import not_a_file

    if path.is_symlink() and not path.exists():
        raise RadcotError(f"dataset {path} is {not_a_file(path)}")
    if path.is_file():
        return Dataset(name=path.stem, queries_path=path, qrels_path=None, index=str(index) if index else None)
    corpus = path / "corpus.jsonl" if (path / "corpus.jsonl").is_file() else None
    queries = next((path / n for n in ("queries.jsonl", "queries.tsv", "topics.tsv") if (path / n).is_file()), None)
    qrels = path / "qrels" / "test.tsv" if (path / "qrels" / "test.tsv").is_file() else None
    train_qrels = path / "qrels" / "train.tsv" if (path / "qrels" / "train.tsv").is_file() else None
    train = next((path / n for n in ("train_queries.jsonl", "queries.train.jsonl") if (path / n).is_file()), None)
    return Dataset(name=path.name, queries_path=queries, qrels_path=qrels, corpus=corpus,
                   index=str(index) if index else None, train_queries_path=train, train_qrels_path=train_qrels)


def _load_named(name: str, data_dir, index) -> Dataset:
    spec = NAMED[name]
    data_dir = data_dir or os.environ.get("RADCOT_MSMARCO_DIR")
    index = index or os.environ.get("RADCOT_MSMARCO_INDEX")
    if data_dir:
        return _load_named_dir(name, spec, Path(data_dir), index)
    # Online: pyserini's bundled topics and qrels (needs the JVM for topics).
    try:
        topics, qrels = _pyserini_files(spec)
    except Exception as e:  # noqa: BLE001 - any failure here means: not available, say what to do
        raise OfflineResourceError(f"{name}: could not get topics/qrels from pyserini ({type(e).__name__}: {e}). "
                                   + _DOWNLOAD_HELP.format(files=f"{spec.topics_file}, {spec.qrels_file}")) from e
    return Dataset(name=name, queries_path=topics, qrels_path=qrels, index=str(index or spec.prebuilt_index))


def _load_named_dir(name: str, spec: NamedSpec, d: Path, index) -> Dataset:
    """A named dataset from a local directory: topics + qrels, optionally collection.tsv, queries.train.tsv."""
    topics, qrels = d / spec.topics_file, d / spec.qrels_file
    missing = [str(p) for p in (topics, qrels) if not p.is_file()]
    if missing:
        raise OfflineResourceError(f"{name}: missing {', '.join(missing)}. "
                                   + _DOWNLOAD_HELP.format(files=f"{spec.topics_file}, {spec.qrels_file}"))
    corpus = d / "collection.tsv" if (d / "collection.tsv").is_file() else None
    train = d / "queries.train.tsv" if (d / "queries.train.tsv").is_file() else None
    if index is None and corpus is None:
        index = spec.prebuilt_index
    return Dataset(name=name, queries_path=topics, qrels_path=qrels, corpus=corpus,
                   index=str(index) if index else None, train_queries_path=train)


def _pyserini_files(spec: NamedSpec) -> tuple[Path, Path]:
    """Write pyserini's topics as TSV to a cache dir; return (topics, qrels) paths."""
    from radcot.data.readers import write_queries_tsv
    from radcot.java import start_jvm

    start_jvm()
    from pyserini.search import get_qrels_file, get_topics  # noqa: E402 (needs the JVM started our way)

    from radcot.utils import cache_dir

    cache = cache_dir() / "topics"
    topics_path = cache / spec.topics_file
    if not topics_path.is_file():
        topics = get_topics(spec.pyserini_topics)
        write_queries_tsv([Query(str(q), t["title"]) for q, t in topics.items()], topics_path)
    return topics_path, Path(get_qrels_file(spec.pyserini_qrels))


def resolve_index(index: str | os.PathLike) -> Path:
    """A local index directory as is; a pyserini prebuilt name downloaded (once) or a clear offline error."""
    path = Path(index)
    if path.is_dir():
        return path
    if os.sep in str(index) or str(index).startswith("."):
        raise RadcotError(f"index directory {index} does not exist: build it with `radcot index --collection "
                          f"PATH --index {index}`")
    try:
        from radcot.java import start_jvm

        start_jvm()
        from pyserini.util import download_prebuilt_index

        return Path(download_prebuilt_index(str(index)))
    except Exception as e:  # noqa: BLE001
        raise OfflineResourceError(
            f"prebuilt index {index!r} is not available ({type(e).__name__}: {e}). Download it on a connected "
            f"machine with `python -c \"from pyserini.util import download_prebuilt_index; "
            f"print(download_prebuilt_index('{index}'))\"` and pass the printed directory with "
            f"--set params.index=DIR (dataset.index in pipelines without params.index; radcot search --index DIR), "
            f"or build one with `radcot index --collection PATH --index DIR`.") from e
