"""The on-disk feature table: `features.parquet` (one row per example) + `meta.json`.

Columns, in order: `id`, then `FEATURE_COLUMNS`, then `sem` (fixed-size list of float32,
`sem_dim` long) and `cluster` (int32). Everything downstream (state fusion, baselines,
reports) reads features through `FeatureTable.read`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UserError
from ..io import atomic_path, write_json_atomic

FEATURE_COLUMNS = (
    "len_prompt",  # prompt tokens after truncation
    "len_response",  # response tokens after truncation
    "logp_cond",  # mean log P(y|x) over response tokens
    "logp_uncond",  # mean log P(y) over response tokens, scored without the prompt
    "logp_cond_sum",  # sum log P(y|x)
    "logp_uncond_sum",  # sum log P(y)
    "ifd",  # logp_cond / logp_uncond = loss(y|x) / loss(y), as the IFD reference code
    "truncated",  # 1 if the response alone was over max_length and was cut
)
RDS_FILE = "rds.npy"  # (N, H) float32 in the table's row order, written by `featurize --rds`
DIFFICULTY_COLUMNS = ("len_prompt", "len_response", "logp_cond", "logp_uncond")  # eq. 3


@dataclass
class FeatureTable:
    ids: list[str]
    columns: dict[str, np.ndarray]  # FEATURE_COLUMNS -> (N,) float64
    sem: np.ndarray  # (N, sem_dim) float32
    cluster: np.ndarray  # (N,) int64
    meta: dict = field(default_factory=dict)
    rds: np.ndarray | None = None  # (N, H) float32: RDS+ representations (featurize --rds), else None
    source: str = field(default="", compare=False)  # the folder it was read from (named in errors)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    @property
    def difficulty(self) -> np.ndarray:
        """(N, 4) float32: [len(x), len(y), log P(y|x), log P(y)] as in eq. 3."""
        return np.stack([self.columns[c] for c in DIFFICULTY_COLUMNS], axis=1).astype(np.float32)

    @property
    def num_classes(self) -> int:
        return int(self.meta.get("classes", int(self.cluster.max()) + 1 if len(self.cluster) else 0))

    def align(self, ids: list[str]) -> "FeatureTable":
        """Rows reordered to `ids`; refuses when any id has no features."""
        pos = {i: k for k, i in enumerate(self.ids)}
        missing = [i for i in ids if i not in pos]
        if missing:
            skipped = self.meta.get("counts", {}).get("skipped")
            why = f"; the featurizer skipped {skipped}" if skipped else ""
            if len(missing) == len(ids):  # not one row in common: the features of another pool
                made = self.meta.get("pool", {}).get("spec") if isinstance(self.meta.get("pool"), dict) else None
                why += (
                    f"; none of the pool's {len(ids)} rows is among the {len(self)} featurized ones, so these "
                    "features were made from another pool" + (f" ({made})" if made else "")
                )
            raise UserError(
                f"{self.source + ': ' if self.source else ''}features are missing for {len(missing)} pool example(s) "
                f"(first id {missing[0]}){why}; re-run `raise-select featurize` on this pool"
            )
        idx = np.fromiter((pos[i] for i in ids), dtype=np.int64, count=len(ids))
        return FeatureTable(
            ids=list(ids),
            columns={k: v[idx] for k, v in self.columns.items()},
            sem=self.sem[idx],
            cluster=self.cluster[idx],
            meta=self.meta,
            rds=None if self.rds is None else self.rds[idx],
            source=self.source,
        )

    def to_arrow(self) -> pa.Table:
        d = self.sem.shape[1]
        arrays = [pa.array(self.ids, pa.string())]
        names = ["id"]
        for c in FEATURE_COLUMNS:
            arrays.append(pa.array(np.asarray(self.columns[c], dtype=np.float64)))
            names.append(c)
        flat = pa.array(np.ascontiguousarray(self.sem, dtype=np.float32).reshape(-1))
        arrays.append(pa.FixedSizeListArray.from_arrays(flat, d))
        names.append("sem")
        arrays.append(pa.array(np.asarray(self.cluster, dtype=np.int32)))
        names.append("cluster")
        return pa.Table.from_arrays(arrays, names=names)

    def write(self, out_dir: str | Path) -> None:
        """Write `features.parquet` and `meta.json` atomically."""
        out_dir = Path(out_dir)
        with atomic_path(out_dir / "features.parquet") as tmp:
            pq.write_table(self.to_arrow(), tmp)
        if self.rds is not None:
            with atomic_path(out_dir / RDS_FILE) as tmp, open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(self.rds, dtype=np.float32))
        write_json_atomic(out_dir / "meta.json", self.meta)

    @classmethod
    def read(cls, path: str | Path) -> "FeatureTable":
        """Read a featurize output folder (or a `features.parquet` file inside one).

        Everything downstream trusts what this returns, so it refuses, naming the file, row
        and field: a missing or unreadable file, non-finite or absurdly large values, a `sem`
        column that is not a fixed-size float list, class ids outside `meta.json`'s class
        count or classes with no row, and duplicate ids.
        """
        path = Path(path)
        if path.is_file() and path.name != "features.parquet":
            raise UserError(
                f"{path}: a file, not a featurize output folder; pass the folder `raise-select featurize "
                "--out` wrote (it holds features.parquet and meta.json)"
            )
        folder = path.parent if path.name == "features.parquet" else path
        fp = folder / "features.parquet"
        if not fp.is_file():
            raise UserError(f"{folder}: no features.parquet here; run `raise-select featurize --out {folder}` first")
        try:
            table = pq.read_table(fp)
        except Exception as e:
            raise UserError(f"{fp}: not a readable Parquet file ({e})") from None
        missing = [c for c in ("id", *FEATURE_COLUMNS, "sem", "cluster") if c not in table.column_names]
        if missing:
            raise UserError(f"{fp}: missing column(s) {', '.join(missing)}")
        meta = _read_meta(folder / "meta.json")
        sem_col = table.column("sem").combine_chunks()
        if not pa.types.is_fixed_size_list(sem_col.type) or not pa.types.is_floating(sem_col.type.value_type):
            raise UserError(
                f"{fp}, field 'sem': expected a fixed-size list of floats, got {sem_col.type}; "
                "re-run `raise-select featurize`"
            )
        if sem_col.null_count:
            raise UserError(f"{fp}: row {sem_col.to_pylist().index(None)}, field 'sem': missing value")
        d = sem_col.type.list_size
        sem = sem_col.flatten().to_numpy(zero_copy_only=False).reshape(-1, d).astype(np.float32)
        columns = {}
        for c in FEATURE_COLUMNS:
            col = table.column(c)
            if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type)):
                raise UserError(f"{fp}, field '{c}': expected numbers, got {col.type}")
            columns[c] = col.to_numpy().astype(np.float64)
        for c, v in [*columns.items(), ("sem", sem_col.flatten().to_numpy(zero_copy_only=False).reshape(-1, d))]:
            bad = ~np.isfinite(v) | (np.abs(np.nan_to_num(v)) > MAX_ABS_FEATURE)
            if bad.any():
                row = int(np.flatnonzero(bad.reshape(len(v), -1).any(axis=1))[0])
                value = float(v[row] if v.ndim == 1 else v[row][bad[row]][0])
                kind = (
                    "NaN"
                    if np.isnan(value)
                    else "infinite"
                    if np.isinf(value)
                    else f"out-of-range (|x| > {MAX_ABS_FEATURE:g})"
                )
                raise UserError(
                    f"{fp}: row {row}, field '{c}': {kind} feature ({value:g}); re-run `raise-select featurize`"
                )
        for c in ("len_prompt", "len_response"):
            low = 1 if c == "len_response" else 0
            bad = (columns[c] < low) | (columns[c] != np.round(columns[c]))
            if bad.any():
                row = int(np.flatnonzero(bad)[0])
                raise UserError(f"{fp}: row {row}, field '{c}': {columns[c][row]} is not a token count >= {low}")
        ids = table.column("id").to_pylist()
        if not pa.types.is_string(table.column("id").type) and not pa.types.is_large_string(table.column("id").type):
            raise UserError(f"{fp}, field 'id': expected text ids, got {table.column('id').type}")
        if None in ids:
            raise UserError(f"{fp}: row {ids.index(None)}, field 'id': missing value")
        if len(set(ids)) != len(ids):
            seen: set = set()
            row = next(i for i, x in enumerate(ids) if x in seen or seen.add(x))
            raise UserError(f"{fp}: row {row}, field 'id': {ids[row]!r} appears twice")
        cluster_col = table.column("cluster")
        if not pa.types.is_integer(cluster_col.type) or cluster_col.null_count:
            raise UserError(
                f"{fp}, field 'cluster': expected integer class ids, got {cluster_col.type}"
                + (" with missing values" if cluster_col.null_count else "")
            )
        cluster = cluster_col.to_numpy().astype(np.int64)
        _check_classes(cluster, meta, fp)
        return cls(
            ids=ids,
            columns=columns,
            sem=sem,
            cluster=cluster,
            meta=meta,
            rds=_read_rds(fp.parent, meta, len(ids)),
            source=str(folder),
        )


def check_same_encoding(features: str | Path, max_length: int, template: str, flag: str = "--max-length") -> None:
    """Refuse training on token sequences other than those the features describe: the policy's
    length and log-probability inputs come from featurize's `max_length` and `template`, and a
    shorter training limit would truncate rows silently (counted nowhere)."""
    path = Path(features)
    folder = path.parent if path.name == "features.parquet" else path
    meta = _read_meta(folder / "meta.json")
    made = {"max_length": meta.get("max_length"), "template": meta.get("template")}
    now = {"max_length": max_length, "template": template}
    differ = [k for k in made if made[k] is not None and made[k] != now[k]]
    if differ:
        k = differ[0]
        option = flag if k == "max_length" else "--template"
        raise UserError(
            f"{folder / 'meta.json'}, field '{k}': the features were computed with {k} {made[k]}, this run "
            f"uses {option} {now[k]}; the policy would read features of other token sequences than the ones "
            f"trained on: pass {option} {made[k]}, or featurize again with {option} {now[k]}"
        )


# No token count, log-probability or hidden-state value comes near this; a larger one is a
# corrupted file, and would overflow the state normalisation (squares in float32).
MAX_ABS_FEATURE = 1e15


def _read_rds(folder: Path, meta: dict, rows: int) -> np.ndarray | None:
    """The RDS+ vectors when meta.json says the folder has them (featurize --rds)."""
    if not isinstance(meta.get("rds"), dict):
        return None
    path = folder / RDS_FILE
    try:
        rds = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UserError(
            f"{path}: unreadable RDS+ vectors ({e}); meta.json lists them: re-run featurize --rds"
        ) from None
    if rds.ndim != 2 or rds.shape[0] != rows:
        raise UserError(
            f"{path}: expected {rows} rows of vectors (one per row of features.parquet), got shape {rds.shape}"
        )
    bad = np.flatnonzero(~np.isfinite(rds).all(axis=1))
    if len(bad):
        raise UserError(f"{path}: row {int(bad[0])}: non-finite value in the RDS+ vector")
    return rds.astype(np.float32, copy=False)


def read_features_meta(features: str | Path) -> dict:
    """`meta.json` of a featurize output folder (or of the folder of its `features.parquet`); {} when absent."""
    path = Path(features)
    return _read_meta((path.parent if path.name == "features.parquet" else path) / "meta.json")


def _read_meta(meta_path: Path) -> dict:
    if not meta_path.is_file():
        return {}
    from ..data.pools import decode_utf8

    try:
        meta = json.loads(decode_utf8(meta_path.read_bytes(), meta_path))
    except json.JSONDecodeError as e:
        raise UserError(
            f"{meta_path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); re-run `raise-select featurize`"
        ) from None
    if not isinstance(meta, dict):
        raise UserError(f"{meta_path}: expected a JSON object")
    classes = meta.get("classes")
    if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 1):
        raise UserError(f"{meta_path}, field 'classes': expected a whole number >= 1, got {classes!r}")
    return meta


def _check_classes(cluster: np.ndarray, meta: dict, fp: Path) -> None:
    """Class ids must be 0..C-1 with every class present (C from meta.json, else the largest id + 1)."""
    if not len(cluster):
        return
    bad = np.flatnonzero(cluster < 0)
    if len(bad):
        raise UserError(f"{fp}: row {int(bad[0])}, field 'cluster': negative class id {int(cluster[bad[0]])}")
    classes = meta.get("classes")
    if classes is not None:
        bad = np.flatnonzero(cluster >= classes)
        if len(bad):
            raise UserError(
                f"{fp}: row {int(bad[0])}, field 'cluster': class id {int(cluster[bad[0]])} is outside the "
                f"{classes} classes of {fp.parent / 'meta.json'} (field 'classes')"
            )
    count = classes if classes is not None else int(cluster.max()) + 1
    empty = sorted(set(range(count)) - set(np.unique(cluster).tolist()))
    if empty:
        where_c = f"{fp.parent / 'meta.json'} (field 'classes') says" if classes is not None else "the class ids imply"
        raise UserError(
            f"{fp}, field 'cluster': {where_c} {count} classes, but class(es) {', '.join(map(str, empty[:5]))} "
            "have no row; re-run `raise-select featurize` with the number of classes you want"
        )
