#!/usr/bin/env bash
# Fill the editor comparison tables of docs/results.md in one go: every editor on the same
# decoder, data and machine. Single-fact CounterFact runs are split into shards (--offset /
# --limit) that run side by side and are then merged by a resumed run over the whole range;
# sequential zsRE runs one process per editor. Every run keeps its own log next to its results.
# Processes on one GPU share it by time slices: in one run, 21 processes on one H200 made each
# several times slower than 4 did (Larimar's median edit went from 18 ms to 266 ms), so keep
# shards few and compare times only between runs that shared the machine the same way.
#
# usage: benchmarks/run_tables.sh COUNTERFACT_JSON ZSRE_JSON OUT_DIR [DEVICE] [SECONDS]
#   DEVICE   cpu, cuda or auto (default auto)
#   SECONDS  wall-clock limit of each run (default: none); a run cut short keeps what it wrote
# environment: TABLES (which tables, default "single sequential"; also batch, forgetting,
#   leakage), N_CASES (single-fact cases, default 1000), N_EDITS (sequential edits, default
#   1000), SINGLE / SEQUENTIAL / OTHERS (editor lists), BATCH_SIZES, FORGET_SIZES,
#   SHARDS_<EDITOR> (processes per single-fact run), MERGE_LIMIT (seconds for each merging run),
#   ICL_SCOPE (threshold of the scoped in-context editor, default 0.5: the built-in model's trained
#   scope detector's probability),
#   LARIMAR_MODEL (a saved model folder instead of the built-in one), STATS_CORPUS (ROME's
#   sentence sample, default runs/corpus/train.jsonl), PYTHON.
set -u
CF=$1 ZSRE=$2 OUT=$3 DEVICE=${4:-auto} LIMIT=${5:-0}
PY=${PYTHON:-python3}
N_CASES=${N_CASES:-1000} N_EDITS=${N_EDITS:-1000}
SINGLE=${SINGLE:-"none icl icl-scope ft rome grace larimar"}
SEQUENTIAL=${SEQUENTIAL:-"none icl-scope ft rome grace larimar"}
OTHERS=${OTHERS:-"none icl-scope ft rome grace larimar"}
TABLES=${TABLES:-"single sequential"}
BATCH_SIZES=${BATCH_SIZES:-1,16,64,256,1024} FORGET_SIZES=${FORGET_SIZES:-64,256}
wants() { case " $TABLES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
mkdir -p "$OUT"

run() {  # run NAME ARGS...: one `larimar eval` with its log, under the time limit
  local name=$1; shift
  local limit=$LIMIT
  case $name in *-merge) limit=${MERGE_LIMIT:-$LIMIT} ;; esac
  mkdir -p "$OUT/logs"
  if [ "$limit" -gt 0 ]; then
    timeout "$limit" "$PY" -m larimar.cli eval "$@" --device "$DEVICE" >"$OUT/logs/$name.log" 2>&1
  else
    "$PY" -m larimar.cli eval "$@" --device "$DEVICE" >"$OUT/logs/$name.log" 2>&1
  fi
  echo "$name: exit $?" >>"$OUT/logs/status.txt"
}

editor_args() {  # the editor options of a table row name
  case $1 in
    icl-scope) echo "--editor icl --scope-threshold ${ICL_SCOPE:-0.5}" ;;
    larimar) echo "--editor larimar ${LARIMAR_MODEL:+--model $LARIMAR_MODEL}" ;;
    rome) echo "--editor rome ${STATS_CORPUS:+--stats-corpus $STATS_CORPUS}" ;;
    *) echo "--editor $1" ;;
  esac
}

shards_of() {
  local var="SHARDS_$(echo "$1" | tr 'a-z-' 'A-Z_')"
  echo "${!var:-1}"
}

wants single || SINGLE=""
wants sequential || SEQUENTIAL=""
for row in $SINGLE; do
  n=$(shards_of "$row"); size=$(( (N_CASES + n - 1) / n ))
  for ((i = 0; i < n; i++)); do
    run "single-$row-$i" single $(editor_args "$row") --data "$CF" --offset $((i * size)) \
      --limit "$size" --max-new-tokens 10 --out "$OUT/single-$row/shard-$i" &
  done
done
for row in $SEQUENTIAL; do
  run "sequential-$row" sequential $(editor_args "$row") --data "$ZSRE" --limit "$N_EDITS" \
    --checkpoints 1,10,100,1000 --max-new-tokens 10 --out "$OUT/sequential-$row" &
done
for row in $OTHERS; do
  wants batch && run "batch-$row" batch $(editor_args "$row") --data "$CF" --sizes "$BATCH_SIZES" \
    --max-eval 64 --max-new-tokens 10 --out "$OUT/batch-$row" &
  wants forgetting && run "forgetting-$row" forgetting $(editor_args "$row") --data "$CF" \
    --sizes "$FORGET_SIZES" --n-forget 4 --max-eval 64 --max-new-tokens 10 --out "$OUT/forgetting-$row" &
  wants leakage && run "leakage-$row" leakage $(editor_args "$row") --data "$CF" --n-known 20 \
    --max-new-tokens 10 --out "$OUT/leakage-$row" &
done
wait

for row in $SINGLE; do  # merge the shards; the resumed run only summarises (or finishes) them
  dir="$OUT/single-$row"
  cat "$dir"/shard-*/cases.jsonl >"$dir/cases.jsonl" 2>/dev/null
  run "single-$row-merge" single $(editor_args "$row") --data "$CF" --limit "$N_CASES" \
    --max-new-tokens 10 --out "$dir" &
done
wait
cat "$OUT/logs/status.txt"
