"""From the record to training data: snapshot → labels → KTO rows and DPO pairs → files.

Public entry points:
- ``write_snapshot(store, out_dir) -> SnapshotInfo`` (in the server process)
- ``build_datasets(snapshot_dir, config, sampler) -> DatasetBuild`` (and ``abuild_datasets``)
- ``export_dataset(rows, path, fmt)``

Importing this package loads DuckDB and pyarrow only; scrubadub is loaded on first use.
"""

from retrain.datasets.best_of_n import Candidate, SampleRequest, Sampler
from retrain.datasets.build import BuildConfig, DatasetBuild, abuild_datasets, build_datasets, summary_line
from retrain.datasets.export import FORMATS, export_dataset
from retrain.datasets.kto import kto_weights
from retrain.datasets.phi import scrub_text
from retrain.datasets.schema import DPO_SCHEMA, KTO_SCHEMA, DatasetValidationError, validate_table
from retrain.datasets.snapshot import SnapshotError, SnapshotInfo, open_snapshot, write_snapshot

__all__ = [
    "BuildConfig", "Candidate", "DatasetBuild", "DatasetValidationError", "DPO_SCHEMA", "FORMATS", "KTO_SCHEMA",
    "SampleRequest", "Sampler", "SnapshotError", "SnapshotInfo", "abuild_datasets", "build_datasets",
    "export_dataset", "kto_weights", "open_snapshot", "scrub_text", "summary_line", "validate_table",
    "write_snapshot",
]
