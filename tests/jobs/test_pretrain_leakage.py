"""The pretraining job's leakage guard on real records: a CinC 2020 pretraining store that holds PTB-XL's ecg_id
1-10 (as CinC redistributed them) next to other Challenge records, evaluated on PTB-XL."""
import json
import shutil
from pathlib import Path

import pytest

from ecg_core.data.config import DataConfig, StoreSource
from ecg_core.data.ingest import main as ingest_main
from ecg_core.data.loader import WindowLoader
from ecg_core.data.store import open_store
from jobs.config import PretrainConfig
from jobs.pretrain import LEAKAGE_FILE, apply_leakage_guard

from ..ecg_core.data.test_ingest import make_ptbxl_dir


def ingest(fmt: str, src: Path, out: Path) -> Path:
    assert ingest_main(["--format", fmt, "--input", str(src), "--output", str(out), "--quiet", "--workers", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def stores(tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("guard")
    mixed = tmp / "cinc_in"
    mixed.mkdir()
    for folder in (data_dir / "ptbxl-real" / "cinc2020_HR", data_dir / "challenge-real" / "cinc2020"):
        for path in folder.iterdir():
            if path.suffix in (".hea", ".mat"):
                shutil.copy(path, mixed / path.name)
    return {"cinc": ingest("cinc2020", mixed, tmp / "cinc.zarr"),
            "ptbxl": ingest("ptbxl", make_ptbxl_dir(tmp / "ptbxl", data_dir), tmp / "ptbxl.zarr")}


def config(stores, guard: bool = True) -> PretrainConfig:
    data = DataConfig(stores=[StoreSource(path=str(stores["cinc"]))], window=500, batch_size=4, block_len=65536)
    return PretrainConfig(data=data, eval_stores=[str(stores["ptbxl"])], leakage_guard=guard)


def test_ptbxl_records_are_excluded_from_pretraining_and_reported(stores, tmp_path):
    cinc = open_store(stores["cinc"])
    copies = sorted(r for r in cinc.records["record_id"] if r.startswith("HR000"))
    assert len(copies) >= 9   # ecg_id 1-10 (a copy failing ingest's checks would simply be absent)
    guarded = apply_leakage_guard(config(stores), tmp_path)
    assert guarded.data.stores[0].exclude == copies
    report = json.loads((tmp_path / LEAKAGE_FILE).read_text())
    check = report["checks"][0]
    assert report["guard"] and check["excluded_records"] == len(copies) == check["eval_records"]
    assert check["pairs_by_name"] == len(copies) and check["pairs_by_signal"] == len(copies)
    # the loader never draws them; the other Challenge records are still used
    seen = {cinc.records["record_id"].iat[int(r)] for b in WindowLoader(guarded.data).take(30) for r in b["record"]}
    assert seen and not seen & set(copies)
    # a requeued attempt reads the same exclusions back instead of recomputing them
    before = (tmp_path / LEAKAGE_FILE).stat().st_mtime_ns
    assert apply_leakage_guard(config(stores), tmp_path).data.stores[0].exclude == copies
    assert (tmp_path / LEAKAGE_FILE).stat().st_mtime_ns == before


def test_switched_off_the_overlap_is_still_reported(stores, tmp_path):
    kept = apply_leakage_guard(config(stores, guard=False), tmp_path)
    assert kept.data.stores[0].exclude == []
    check = json.loads((tmp_path / LEAKAGE_FILE).read_text())["checks"][0]
    assert check["excluded_records"] == 0 and check["eval_records"] >= 9 and "NOT excluded" in check["summary"]


def test_the_evaluation_store_itself_needs_no_matching(stores, tmp_path):
    cfg = config(stores)
    cfg.data.stores = [StoreSource(path=str(stores["ptbxl"]), folds=[1, 2, 3, 4, 5, 6, 7, 8])]
    same = apply_leakage_guard(cfg, tmp_path)
    assert same.data.stores[0].exclude == []
    check = json.loads((tmp_path / LEAKAGE_FILE).read_text())["checks"][0]
    assert "the evaluation store itself" in check["summary"]
