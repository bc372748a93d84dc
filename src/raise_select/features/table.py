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
    "len_prompt",       # prompt tokens after truncation
    "len_response",     # response tokens after truncation
    "logp_cond",        # mean log P(y|x) over response tokens
    "logp_uncond",      # mean log P(y) over response tokens, scored without the prompt
    "logp_cond_sum",    # sum log P(y|x)
    "logp_uncond_sum",  # sum log P(y)
    "ifd",              # logp_cond / logp_uncond = loss(y|x) / loss(y), as the IFD reference code
    "truncated",        # 1 if the response alone was over max_length and was cut
)
DIFFICULTY_COLUMNS = ("len_prompt", "len_response", "logp_cond", "logp_uncond")  # eq. 3


@dataclass
class FeatureTable:
    ids: list[str]
    columns: dict[str, np.ndarray]  # FEATURE_COLUMNS -> (N,) float64
    sem: np.ndarray                 # (N, sem_dim) float32
    cluster: np.ndarray             # (N,) int64
    meta: dict = field(default_factory=dict)

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
            raise UserError(
                f"features are missing for {len(missing)} pool example(s) (first id {missing[0]}){why}; "
                "re-run `raise-select featurize` on this pool"
            )
        idx = np.fromiter((pos[i] for i in ids), dtype=np.int64, count=len(ids))
        return FeatureTable(
            ids=list(ids),
            columns={k: v[idx] for k, v in self.columns.items()},
            sem=self.sem[idx],
            cluster=self.cluster[idx],
            meta=self.meta,
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
        write_json_atomic(out_dir / "meta.json", self.meta)

    @classmethod
    def read(cls, path: str | Path) -> "FeatureTable":
        """Read a featurize output folder (or a `features.parquet` file inside one)."""
        path = Path(path)
        folder = path.parent if path.suffix == ".parquet" else path
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
        meta_path = folder / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        sem_col = table.column("sem").combine_chunks()
        d = sem_col.type.list_size
        sem = sem_col.flatten().to_numpy(zero_copy_only=False).reshape(-1, d).astype(np.float32)
        columns = {c: table.column(c).to_numpy().astype(np.float64) for c in FEATURE_COLUMNS}
        for c, v in columns.items():
            if np.isnan(v).any():
                bad = int(np.flatnonzero(np.isnan(v))[0])
                raise UserError(f"{fp}: row {bad}, field '{c}': NaN feature")
        if np.isnan(sem).any():
            bad = int(np.flatnonzero(np.isnan(sem).any(axis=1))[0])
            raise UserError(f"{fp}: row {bad}, field 'sem': NaN feature")
        return cls(
            ids=table.column("id").to_pylist(),
            columns=columns,
            sem=sem,
            cluster=table.column("cluster").to_numpy().astype(np.int64),
            meta=meta,
        )
