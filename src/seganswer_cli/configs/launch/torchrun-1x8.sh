#!/usr/bin/env bash
# One node, 8 GPUs: any seganswer training command on torchrun, one process per GPU. The recipe
# says how the processes share the model (stage2-7b and stage3-7b: strategy fsdp, FSDP2 shards;
# stage1-7b: ddp); --strategy fsdp|ddp on the command overrides it.
#
#   LAUNCH=$(python -c "import seganswer_cli, os; print(os.path.dirname(seganswer_cli.__file__))")/configs/launch
#   bash $LAUNCH/torchrun-1x8.sh train-stage2 -c stage2-7b --model runs/s1-merged \
#       --data visualcot=data/visualcot --out runs/s2
#   GPUS=4 bash $LAUNCH/torchrun-1x8.sh ...          # another GPU count on the node
#
# Refuses (one line, exit 2) when fewer GPUs are visible than GPUS asks for.
set -euo pipefail
GPUS=${GPUS:-8}
have=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$have" -lt "$GPUS" ]; then
    echo "error: this launch asks for $GPUS GPUs but $have are visible (set GPUS=$have, or CUDA_VISIBLE_DEVICES)" >&2
    exit 2
fi
exec torchrun --standalone --nproc-per-node "$GPUS" -m seganswer_cli "$@"
