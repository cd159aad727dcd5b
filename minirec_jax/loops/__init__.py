"""Host training loops (SFT, SASRec and the baselines, GRPO): data -> jitted pure steps ->
evaluation -> checkpoints -> predictions and results.json, each resumable from its workdir."""
