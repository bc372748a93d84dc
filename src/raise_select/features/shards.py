"""Shard files: the featurize pass writes one Parquet file per slice of the pool.

Shard k holds the raw results for pool examples [k * shard_size, (k + 1) * shard_size):
lengths, log-probability sums and the embedding vector before the final reduction.
Files are written atomically, so one that exists is complete; a crash loses only the
shard being computed, and the next run skips every shard already on disk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UserError
from ..io import atomic_path

SHARD_GLOB = "shard-*.parquet"


def shard_path(folder: Path, index: int) -> Path:
    return Path(folder) / f"shard-{index:06d}.parquet"


@dataclass
class Shard:
    ids: list[str]
    len_prompt: np.ndarray  # (n,) int: prompt tokens after truncation
    len_response: np.ndarray  # (n,) int: response tokens after truncation
    logp_cond_sum: np.ndarray  # (n,) float64
    logp_uncond_sum: np.ndarray  # (n,) float64
    truncated: np.ndarray  # (n,) int: the response alone was over max_length
    prompt_cut: np.ndarray  # (n,) int: prompt tokens dropped from the left
    vectors: np.ndarray  # (n, D) float32: embedding before the final reduction
    skipped: dict  # reason -> count, rows of this slice left out
    rds: np.ndarray | None = None  # (n, H) float32: RDS+ representation (featurize --rds)

    def write(self, path: Path) -> None:
        d = self.vectors.shape[1]
        table = pa.table(
            {
                "id": pa.array(self.ids, pa.string()),
                "len_prompt": pa.array(self.len_prompt, pa.int32()),
                "len_response": pa.array(self.len_response, pa.int32()),
                "logp_cond_sum": pa.array(self.logp_cond_sum, pa.float64()),
                "logp_uncond_sum": pa.array(self.logp_uncond_sum, pa.float64()),
                "truncated": pa.array(self.truncated, pa.int8()),
                "prompt_cut": pa.array(self.prompt_cut, pa.int32()),
                "vectors": pa.FixedSizeListArray.from_arrays(
                    pa.array(np.ascontiguousarray(self.vectors, dtype=np.float32).reshape(-1)), d
                ),
                **(
                    {}
                    if self.rds is None
                    else {
                        "rds": pa.FixedSizeListArray.from_arrays(
                            pa.array(np.ascontiguousarray(self.rds, dtype=np.float32).reshape(-1)), self.rds.shape[1]
                        )
                    }
                ),
            }
        ).replace_schema_metadata({"skipped": json.dumps(self.skipped, sort_keys=True)})
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)

    @classmethod
    def read(cls, path: Path, columns_only: bool = False) -> "Shard":
        """Read a shard; with `columns_only` the vectors are left out (an empty (n, 0) array)."""
        names = ["id", "len_prompt", "len_response", "logp_cond_sum", "logp_uncond_sum", "truncated", "prompt_cut"]
        try:
            table = pq.read_table(path, columns=names if columns_only else None)
        except Exception as e:  # pyarrow raises several types for damaged files
            raise UserError(f"{path}: unreadable shard ({e}); delete it and re-run to recompute it") from None
        n = table.num_rows
        if columns_only:
            vectors = np.zeros((n, 0), dtype=np.float32)
        else:
            col = table.column("vectors").combine_chunks()
            vectors = col.flatten().to_numpy(zero_copy_only=False).reshape(n, col.type.list_size)
        meta = table.schema.metadata or {}
        rds = None
        if not columns_only and "rds" in table.column_names:
            rcol = table.column("rds").combine_chunks()
            rds = rcol.flatten().to_numpy(zero_copy_only=False).reshape(n, rcol.type.list_size)
        return cls(
            rds=rds,
            ids=table.column("id").to_pylist(),
            vectors=vectors,
            skipped=json.loads(meta.get(b"skipped", b"{}")),
            **{c: table.column(c).to_numpy() for c in names[1:]},
        )
