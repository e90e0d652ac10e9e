"""Workflows: what chains training (`voxforge.train`, `voxforge.stages`) and inference
(`voxforge.pipelines`) — the pipeline runner and the reports of its runs. This layer sits
above both and below `voxforge.commands` (docs/architecture.md)."""
