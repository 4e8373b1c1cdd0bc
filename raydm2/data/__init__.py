"""Where images come from: storage locations (local paths and filesystem URIs), image bytes, pools (Parquet
datasets of `id`, `image`, `label`, `source`) and the ingesters that write pools from the original formats."""
