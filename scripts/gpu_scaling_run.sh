#!/usr/bin/env bash
# The scaling measurements of docs/benchmarks.md (docs/scaling.md explains them): ListOps (the
# LRA paper config, generated data), 1 GPU vs 2 GPUs at one global batch, for ddp,
# deepspeed_stage2 and deepspeed_stage3, bf16.
#
#   scripts/gpu_scaling_run.sh [OUT_DIR [RUN ...]]      # OUT_DIR: results/scaling if not given
#
# RUN names (default: all, in this order, most important first):
#   ddp2 ddp1 ds2_2 ds3_2             200 steps each (2 epochs of 100), checkpoint every epoch
#   convert_ds3 convert_ds2           epoch-0 DeepSpeed checkpoint -> one file -> cli.py
#                                     validate (vs the value the run logged) and test
#   resume_ddp2 resume_ds3_2 resume_ds2_2   fit from the epoch-0 checkpoint to step 200
#   ds2_1 ds3_1                       1-GPU DeepSpeed, for the 1 -> 2 GPU efficiency
#   wide_ddp2 wide_ds2_2 wide_ds3_2   a 100M-parameter encoder (dim 1024, 8 layers) at length
#                                     512, 30 steps: where ZeRO's sharding shows in memory
#
# What each run writes under OUT_DIR/<run>/: console.log, run.yaml (the overrides),
# probe/{loss.csv,summary.json} (scripts/scaling_probe.py), csv/ (Lightning's CSVLogger).
# OUT_DIR/runs.tsv gets one line per run: name, exit status, wall seconds.
#
# Overrides of the paper config, the same for every run (docs/scaling.md says why):
# lr 1e-3 with 20 warmup steps (the paper's 1,000-step warmup would leave 200 steps flat),
# dropout 0 (so 1- and 2-GPU curves differ only by arithmetic, not by dropout masks),
# validation on 8 batches at each epoch end, CSV logging.
#
# Environment: PYTHON [python3], ACCEL [gpu] (cpu for a dry run), STEPS [200], GLOBAL_BATCH
# [32], MAX_LENGTH [2048], GEN_MIN/GEN_MAX [500/2000] (tree lengths), DEADLINE [0 = none]:
# seconds after which no new run starts, RUN_TIMEOUT [240] seconds per run.
set -uo pipefail

cd "$(dirname "$0")/.."
OUT=${1:-results/scaling}
[[ $# -gt 0 ]] && shift
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

PYTHON=${PYTHON:-python3}
ACCEL=${ACCEL:-gpu}
STEPS=${STEPS:-200}
GLOBAL_BATCH=${GLOBAL_BATCH:-32}
MAX_LENGTH=${MAX_LENGTH:-2048}
GEN_MIN=${GEN_MIN:-500}
GEN_MAX=${GEN_MAX:-2000}
DEADLINE=${DEADLINE:-0}
RUN_TIMEOUT=${RUN_TIMEOUT:-240}
EPOCH_STEPS=$((STEPS / 2))
TRAIN=$((EPOCH_STEPS * GLOBAL_BATCH))
DATA=${DATA:-data/listops-scaling-$TRAIN-$MAX_LENGTH}
export PYTHONPATH="$PWD/scripts${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
START=$SECONDS

RUNS=("$@")
if [[ ${#RUNS[@]} -eq 0 ]]; then
    RUNS=(ddp2 ddp1 ds2_2 ds3_2 convert_ds3 resume_ddp2 resume_ds3_2 resume_ds2_2
          ds2_1 ds3_1 convert_ds2 wide_ddp2 wide_ds2_2 wide_ds3_2)
fi

# The generated configs, from the committed files or, where they are missing, from the script
# that writes them (the same text).
CONFIGS=configs
if [[ ! -f configs/lra/listops/fmm2_band5.yaml || ! -f configs/strategies/ddp.yaml ]]; then
    CONFIGS=$OUT/configs
    "$PYTHON" - "$CONFIGS" <<'EOF'
import sys
from pathlib import Path
sys.path.insert(0, "scripts")
import make_configs
root = Path(sys.argv[1])
for relative, text in make_configs.all_configs().items():
    path = root / Path(relative).relative_to("configs")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
EOF
fi
BASE=$CONFIGS/lra/listops/${VARIANT:-fmm2_band5}.yaml

log() { echo "[$((SECONDS - START)) s] $*" | tee -a "$OUT/progress.log"; }

# Generated once, before any timed run; every run reads the same files.
if [[ ! -f "$DATA/basic_train.tsv" ]]; then
    log "generating $TRAIN ListOps trees into $DATA"
    "$PYTHON" -m data_modules.lra.listops generate --out "$DATA" --train "$TRAIN" --val 256 \
        --test 256 --min-length "$GEN_MIN" --max-length "$GEN_MAX" --seed 0 2>&1 | tail -n 1
fi

# write_overrides RUN_DIR DEVICES STEPS [wide]: the per-run YAML stacked after the configs.
write_overrides() {
    local dir=$1 devices=$2 steps=$3 wide=${4:-}
    local batch=$((GLOBAL_BATCH / devices))
    local encoder="{dropout: 0.0, attention: {dropout: 0.0}}"
    local checkpoint="
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {dirpath: $dir/ckpt, filename: \"{epoch}-{step}\", save_top_k: -1, every_n_epochs: 1}"
    local val_batches=8
    if [[ -n "$wide" ]]; then
        encoder="{dim: 1024, depth: 8, num_heads: 16, ffn_dim: 4096, dropout: 0.0, attention: {dropout: 0.0}}"
        checkpoint=""  # 1.2 GB a checkpoint, and nothing to resume: memory is the point
        val_batches=0
    fi
    cat > "$dir/run.yaml" <<EOF
trainer:
  accelerator: $ACCEL
  devices: $devices
  max_steps: $steps
  max_epochs: -1
  val_check_interval: 1.0
  limit_val_batches: $val_batches
  num_sanity_val_steps: 0
  log_every_n_steps: 10
  default_root_dir: $dir
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args: {save_dir: $dir, name: csv}
  callbacks:$checkpoint
    - class_path: scaling_probe.ScalingProbe
      init_args: {out_dir: $dir/probe, warmup_steps: 10}
model:
  init_args:
    encoder: $encoder
    optim: {lr: 0.001, warmup_steps: 20, schedule: linear}
data:
  init_args:
    data_dir: $DATA
    batch_size: $batch
    max_length: $MAX_LENGTH
    num_workers: 4
EOF
}

strategy_config() {
    case $1 in
        ddp) echo "$CONFIGS/strategies/ddp.yaml" ;;
        ds2) echo "$CONFIGS/strategies/deepspeed_stage2.yaml" ;;
        ds3) echo "$CONFIGS/strategies/deepspeed_stage3.yaml" ;;
    esac
}

# cli NAME SUBCOMMAND ARGS...: runs cli.py, logs to OUT/NAME/console.log, records the status.
cli() {
    local name=$1 subcommand=$2
    shift 2
    local began=$SECONDS rc
    timeout "$RUN_TIMEOUT" "$PYTHON" cli.py "$subcommand" "$@" > "$OUT/$name/console.log" 2>&1
    rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - began))" >> "$OUT/runs.tsv"
    log "$name: exit $rc in $((SECONDS - began)) s"
    if [[ $rc -ne 0 ]]; then tail -n 25 "$OUT/$name/console.log"; fi
    return $rc
}

# train NAME STRATEGY DEVICES WIDE ["" or wide] [extra cli args...]
train() {
    local name=$1 strategy=$2 devices=$3 wide=$4
    shift 4
    local dir=$OUT/$name steps=$STEPS
    mkdir -p "$dir"
    [[ -n "$wide" ]] && steps=30
    write_overrides "$dir" "$devices" "$steps" "$wide"
    cli "$name" fit --config "$BASE" --config "$(strategy_config "$strategy")" \
        --config "$CONFIGS/strategies/bf16.yaml" --config "$dir/run.yaml" "$@"
}

epoch0_checkpoint() { ls -d "$OUT/$1"/ckpt/epoch=0-step=*.ckpt 2>/dev/null | head -n 1; }

resume() {
    local name=$1 source=$2 strategy=$3 devices=$4
    local ckpt
    ckpt=$(epoch0_checkpoint "$source")
    if [[ -z "$ckpt" ]]; then log "$name: no epoch-0 checkpoint in $source"; return 1; fi
    train "$name" "$strategy" "$devices" "" --ckpt_path "$ckpt" --weights_only false
}

# convert NAME SOURCE: DeepSpeed directory -> one file, then validate and test from it on 1 GPU
# with a plain strategy.
convert() {
    local name=$1 source=$2 ckpt
    local dir=$OUT/$name
    mkdir -p "$dir"
    ckpt=$(epoch0_checkpoint "$source")
    if [[ -z "$ckpt" ]]; then log "$name: no epoch-0 checkpoint in $source"; return 1; fi
    local began=$SECONDS
    "$PYTHON" scripts/convert_deepspeed_checkpoint.py "$ckpt" "$dir/model.ckpt" --force \
        > "$dir/convert.log" 2>&1
    local rc=$?
    printf '%s\t%s\t%s\n' "$name.convert" "$rc" "$((SECONDS - began))" >> "$OUT/runs.tsv"
    log "$name.convert: exit $rc; $(tail -n 1 "$dir/convert.log")"
    [[ $rc -eq 0 ]] || return 1
    ls -la "$dir" "$ckpt" > "$dir/files.txt" 2>&1
    write_overrides "$dir" 1 "$STEPS"
    for subcommand in validate test; do
        mkdir -p "$dir/$subcommand"
        cli "$name/$subcommand" "$subcommand" --config "$BASE" --config "$dir/run.yaml" \
            --trainer.strategy auto --trainer.precision bf16-mixed \
            --trainer.logger.init_args.name "$subcommand" \
            --ckpt_path "$dir/model.ckpt" --weights_only false
    done
    rm -f "$dir/model.ckpt"  # rebuilt in seconds; keeps the tarball small
}

for run in "${RUNS[@]}"; do
    if [[ "$DEADLINE" -gt 0 && $((SECONDS - START)) -ge "$DEADLINE" ]]; then
        log "deadline reached: skipping $run"
        printf '%s\tskipped\t0\n' "$run" >> "$OUT/runs.tsv"
        continue
    fi
    case $run in
        ddp2) train ddp2 ddp 2 "" ;;
        ddp1) train ddp1 ddp 1 "" ;;
        ds2_2) train ds2_2 ds2 2 "" ;;
        ds3_2) train ds3_2 ds3 2 "" ;;
        ds2_1) train ds2_1 ds2 1 "" ;;
        ds3_1) train ds3_1 ds3 1 "" ;;
        resume_ddp2) resume resume_ddp2 ddp2 ddp 2 ;;
        resume_ds2_2) resume resume_ds2_2 ds2_2 ds2 2 ;;
        resume_ds3_2) resume resume_ds3_2 ds3_2 ds3 2 ;;
        convert_ds2) convert convert_ds2 ds2_2 ;;
        convert_ds3) convert convert_ds3 ds3_2 ;;
        wide_ddp2) train wide_ddp2 ddp 2 wide ;;
        wide_ds2_2) train wide_ds2_2 ds2 2 wide ;;
        wide_ds3_2) train wide_ds3_2 ds3 2 wide ;;
        *) log "unknown run $run"; exit 2 ;;
    esac
done
log "done"
