#!/usr/bin/env bash
# Multi-node training with torchrun (no SLURM): run this SAME command once on every node.
#
#   node 0:  NNODES=2 NPROC_PER_NODE=8 MASTER_ADDR=node0.example MASTER_PORT=29500 \
#              scripts/torchrun_multinode.sh fit --config configs/lra/listops.yaml \
#              --config configs/strategies/multinode.yaml --config configs/strategies/bf16.yaml
#   node 1:  the same line, on node 1 (same MASTER_ADDR: node 0's address, reachable from node 1)
#
# Everything after the script name is passed to `cli.py` unchanged (subcommand first). The
# script adds `--trainer.num_nodes $NNODES --trainer.devices $NPROC_PER_NODE`, so the Trainer's
# world size always equals torchrun's (Lightning refuses to start when they differ).
#
# Rendezvous is c10d: node ranks are handed out by the rendezvous, so no node needs to know its
# own rank, and the agent on MASTER_ADDR hosts the store (open MASTER_PORT between the nodes).
# Lightning detects torchrun (TorchElasticEnvironment) and takes ranks from its variables.
#
# Variables (defaults in brackets):
#   NNODES          number of nodes [1]
#   NPROC_PER_NODE  processes per node = GPUs per node [all GPUs torch sees, or 1 on CPU]
#   MASTER_ADDR     address of the rendezvous host, node 0 [127.0.0.1]
#   MASTER_PORT     its TCP port [29500]
#   RDZV_ID         job id shared by all nodes of one run [fmmformer]
#   PYTHON          interpreter with the project installed [python]
#   ACCELERATOR     if set, passed as --trainer.accelerator (e.g. cpu for a dry run)
#
# The network interface NCCL / gloo use can be pinned with NCCL_SOCKET_IFNAME / GLOO_SOCKET_IFNAME
# when nodes have several. tests/test_multinode.py runs this script twice on one machine (two
# simulated nodes, CPU, gloo) in CI.
set -euo pipefail

cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python}
NNODES=${NNODES:-1}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
RDZV_ID=${RDZV_ID:-fmmformer}
if [[ -z "${NPROC_PER_NODE:-}" ]]; then
    NPROC_PER_NODE=$("$PYTHON" -c 'import torch; print(max(1, torch.cuda.device_count()))')
fi

if [[ $# -lt 1 ]]; then
    echo "usage: $0 {fit|validate|test|predict} [cli.py arguments...]" >&2
    exit 2
fi
for value in "$NNODES" "$NPROC_PER_NODE" "$MASTER_PORT"; do
    if ! [[ "$value" =~ ^[1-9][0-9]*$ ]]; then
        echo "error: NNODES, NPROC_PER_NODE and MASTER_PORT must be positive integers, got '$value'" >&2
        exit 2
    fi
done

subcommand=$1
shift
extra=(--trainer.num_nodes "$NNODES" --trainer.devices "$NPROC_PER_NODE")
if [[ -n "${ACCELERATOR:-}" ]]; then
    extra+=(--trainer.accelerator "$ACCELERATOR")
fi

# Never let a program started here switch NVLink multicast on (it can take shared GPUs down on
# some hosts); harmless where there is no NVLink.
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}

exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --nproc_per_node="$NPROC_PER_NODE" \
    --rdzv_backend=c10d \
    --rdzv_endpoint="$MASTER_ADDR:$MASTER_PORT" \
    --rdzv_id="$RDZV_ID" \
    cli.py "$subcommand" "$@" "${extra[@]}"
