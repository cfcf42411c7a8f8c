"""ECG data: reading WFDB records, labels, the Zarr v3 store, ingest, demo data and the training loader."""
