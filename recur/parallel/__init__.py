"""Multi-process training. One job per module:

config.py     --dist.* options (DistConfig)
env.py        rank/world/device from torchrun or slurm (nodelist parser), process-group start-up
backend.py    none | ddp | fsdp | deepspeed behind the verbs the training loop uses
fsdp.py       FSDP2 fully_shard per block + root, mixed precision, activation checkpointing
ddp.py        torch DistributedDataParallel, configured for parameters unused on some steps
deepspeed.py  ZeRO config reconciliation with our config, engine start-up, checkpoint state
export.py     any checkpoint -> model.pt / model.safetensors / config.json
"""
