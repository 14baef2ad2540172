#!/usr/bin/env bash
# One prepared run of mmssl's CUDA path, for a GPU lent for a few minutes (see
# benchmarks/README.md, "On a GPU"). From the repository root, with a python3 that has torch
# with CUDA and mmssl's dependencies importable:
#
#   OUT=gpu-out bash benchmarks/gpu_check.sh
#
# 1. benchmarks.throughput part 4 on CUDA: today's step (dense estimator, contiguous, eager,
#    per-parameter RAdam, glibc defaults) against the new one (lean estimator with shared
#    candidates, the memory format `auto` picks, multi-tensor RAdam, cpu_allocator retain),
#    each in its own process, same rounds (part 5, compilation, left out: it would take the
#    lease's minutes);
# 2. benchmarks.neuro on CUDA at 64³, batch 16/32/64: fp32, channels-last-3d, bf16 autocast
#    and both, with volumes/s, peak memory and achieved FLOP/s, and the loader against training;
# 3. the brain analyses at 64³ on a simulated 200-subject cohort (simulated on the CPU cores
#    while 1 and 2 use the GPU): a CR-XX run, `regions` (latent and ig), `links`, and the same
#    regions on an untrained control.
# Every step is bounded by what is left of DEADLINE seconds; results are packed into
# $OUT/results.tgz after each step, so a run cut short still returns what it finished.
# SMOKE=1 runs the same steps on the CPU at toy sizes (to check the script before a lease);
# SKIP_BENCH=1 leaves out 1 and 2; SUBJECTS, EPOCHS and PERMS size step 3.
set -u
OUT=${OUT:-gpu-out}
PY=${PY:-python3}
WORK=${WORK:-/tmp/mmssl-gpu}
DEADLINE=${DEADLINE:-540}
mkdir -p "$OUT" "$WORK"
OUT=$(cd "$OUT" && pwd)
export PYTHONUNBUFFERED=1
M="$PY -m mmssl.cli"
log() { echo "[$(date +%T) +${SECONDS}s] $*"; }
left() { echo $((DEADLINE - SECONDS)); }
pack() { (cd "$WORK" && tar czf "$OUT/results.tgz" simulate.log $(find runs -maxdepth 3 \
    \( -name '*.json' -o -name '*.csv' -o -name log.txt \) 2>/dev/null)) 2>/dev/null || true; }
# run STEP_SECONDS COMMAND...: the command, if that many seconds are left, under a timeout
run() { local need=$1; shift
  if [ "$(left)" -lt "$need" ]; then log "skipped (only $(left) s left): $*"; return 1; fi
  log "$*"; timeout "$(left)" "$@"; local rc=$?; log "rc=$rc"; pack; return $rc; }

if [ "${SMOKE:-0}" = 1 ]; then
  DEVICE=cpu; SUBJECTS=12; VOXEL=8; PRESET=neuro-quick; EPOCHS=1; BATCH=4; PERMS=20
  BENCH_SIZES=32; BENCH_BATCHES=2; BENCH_SUBJECTS=6; UNITS=2; EXTRA="--set model.width=4"
else
  DEVICE=cuda; SUBJECTS=${SUBJECTS:-200}; VOXEL=3; PRESET=neuro; EPOCHS=${EPOCHS:-100}; BATCH=32
  PERMS=${PERMS:-500}; BENCH_SIZES=64; BENCH_BATCHES=16,32,64; BENCH_SUBJECTS=16; UNITS=16
  EXTRA=""
fi
WORKERS=$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))

log "start"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
$PY -c "import torch, sys; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu', 'python', sys.version)"

# The cohort is simulated on the CPU cores while the benchmarks use the GPU.
( $M simulate --out "$WORK/cohort" --subjects $SUBJECTS --seed 3 --voxel-size $VOXEL \
    --workers $WORKERS > "$WORK/simulate.log" 2>&1; echo "simulated rc=$?" >> "$WORK/simulate.log" ) &
SIM=$!

QUICK=""; [ "${SMOKE:-0}" = 1 ] && QUICK="--quick"
if [ "${SKIP_BENCH:-0}" != 1 ]; then
run 60 $PY -m benchmarks.throughput --device $DEVICE $QUICK --skip-objectives \
    --skip-estimator --skip-methods --skip-compile --json "$OUT/speedup_$DEVICE.json"
run 90 $PY -m benchmarks.neuro --device $DEVICE --sizes $BENCH_SIZES \
    --batch-sizes $BENCH_BATCHES --load-batch-sizes $BENCH_BATCHES --subjects $BENCH_SUBJECTS \
    --repeats 5 --warmup 2 --split-files 1 --variants fp32,fp32-cl,bf16,bf16-cl --no-figure \
    --workdir "$WORK/bench" --json "$OUT/neuro_$DEVICE.json"
fi
wait $SIM; log "$(tail -n 1 "$WORK/simulate.log")"

cd "$WORK" || exit 1
COMMON="--preset $PRESET --manifest cohort/manifest.csv --objective CR-XX --batch-size $BATCH
  --set trainer.progress_bar=false --set trainer.checkpoint=last $EXTRA"
run 120 $M run $COMMON --epochs $EPOCHS --out runs/trained
run 60 $M regions runs/trained --method latent --units $UNITS --permutations $PERMS
cp runs/trained/regions.json runs/trained/regions/latent.json 2>/dev/null
run 30 $M links runs/trained --permutations $PERMS
run 60 $M regions runs/trained --method ig --ig-steps 16 --permutations $PERMS
run 40 $M run $COMMON --epochs 1 --set optim.lr=1e-12 --out runs/untrained
run 60 $M regions runs/untrained --method latent --units $UNITS --permutations $PERMS
run 60 $M regions runs/untrained --method ig --ig-steps 16 --permutations $PERMS
cd - > /dev/null
pack
log "done"
