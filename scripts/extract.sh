#!/usr/bin/env bash
# scripts/extract.sh: stage 3 of the reproduction, activation stores as sharded SLURM arrays plus a merge job.
#
# For every store: one array job of EXTRACT_SHARDS tasks, each `clipgen extract ... --shard auto --resume`
# (the task's part of the image set, from SLURM_ARRAY_TASK_ID/COUNT; a requeued task resumes its part), then
# one CPU job `clipgen extract merge` (after the array) that joins the parts into STORE.h5 (virtual datasets
# that read the part files in place; MERGE_COPY=1 copies them into one file). Stores:
#   MECH_RUNS  OUT/stores/<family>/<run>/dn-test.h5: the DomainNet test split, all six domains, every layer
#              (CKA, embeddings); default: the aligned quickdraw model and the standard CG high quickdraw s0
#   SAE_RUNS   dn-test-embedding.h5, dn-train-embedding.h5 and base-train-embedding.h5: the image embedding of
#              the DomainNet test and train splits and of the base dataset (the SAE's training rows);
#              default: CG high + leave-out-domain for clipart and sketch, seed 0, of the CC12M family when
#              CC12M_TSV is set, else of the main grid (SAE=0 skips them); the two training stores are written
#              uncompressed, so that SAE training reads them at memory speed (docs/sae.md)
# A store that is already complete is skipped. Each job waits for the training job of its run when this runs
# inside scripts/reproduce.sh (or for AFTER).
#
# Usage: scripts/extract.sh [--dry-run] [--help]     (DRY_RUN=1 prints the sbatch calls instead)
#
# Variables:
#   OUT, DOMAINNET       output root and DomainNet root (required)
#   MECH_RUNS, SAE_RUNS  run directories (space-separated; defaults above); SAE=0 skips the SAE stores
#   EPOCH                checkpoint epoch (default: each run's last)
#   EXTRACT_SHARDS       array tasks per DomainNet store (8); BASE_SHARDS for the base dataset store (32)
#   EXTRACT_GPUS, EXTRACT_CPUS, EXTRACT_TIME, EXTRACT_MEM   per task (1, 16, 04:00:00, unset)
#   EXTRACT_ARGS         extra options of every `clipgen extract`, e.g. '--batch-size 512' (each task decodes with
#                        EXTRACT_CPUS - 1 loader workers)
#   IMAGE_CACHE, CACHE_SIZE, CACHE_CPUS, CACHE_TIME   the test-split stores read the test images from the image
#                        cache (one `clipgen data cache` job per domain, shared with evaluation; see lib.sh)
#   SAE_BASE=0           SAE stores without base-dataset rows; SAE_BASE_TSV: the base TSV (default: CC12M_TSV for
#                        the CC12M family, else BASE_TRAIN or OUT/data/imagenet-captions/in-captions-train.tsv)
#   MERGE_COPY=1         merged stores hold a copy of the rows (default: virtual, the part files stay needed)
#   FORCE=1              re-extract stores that exist
#   PARTITION, CPU_PARTITION, ACCOUNT, QOS, SETUP, AFTER, CLIPGEN   as in scripts/lib.sh
#
# Example:
#   OUT=/scratch/clipgen DOMAINNET=/data/domainnet PARTITION=gpu scripts/extract.sh
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cg_parse_args "$@"
cg_init_out
cg_require_dir DOMAINNET "the DomainNet root with <domain>_{train,test}.txt"
cg_init_clipgen
cg_init_state
cg_check_after
cg_require_int EXTRACT_SHARDS 8
cg_require_int BASE_SHARDS 32
cg_require_int EXTRACT_CPUS 16
cg_require_flag SAE 1
cg_require_flag SAE_BASE 1
cg_require_flag MERGE_COPY 0
cg_require_flag FORCE 0
cg_require_count EXTRACT_GPUS 1
EXTRACT_TIME=${EXTRACT_TIME:-04:00:00}
if [ -n "${EPOCH:-}" ] && ! [[ $EPOCH =~ ^[0-9]+$ ]]; then cg_die "EPOCH=$EPOCH: not an epoch number"; fi
cg_default_runs
read -r -a extra <<< "${EXTRACT_ARGS:-}"
epoch=()
if [ -n "${EPOCH:-}" ]; then epoch=(--epoch "$EPOCH"); fi
merge_copy=()
if [ "$MERGE_COPY" = 1 ]; then merge_copy=(--copy); fi

store_complete() {  # the store exists and its structure says every row is written
    [ -f "$1" ] && "${CG_CLIPGEN[@]}" extract validate --quick "$1" > /dev/null 2>&1
}

extraction() {  # extraction RUN STORE SHARDS [clipgen extract options...]: array + merge; records the merge job
    # (the array's working folder is `chdir`: relative image paths of a --tsv are read from there)
    local run=$1 store=$2 shards=$3 dep tag i mode=--resume parts=() where=() images=()
    shift 3
    dep=$(cg_dep_get "$run" "$(dirname "$run")")
    if [ ! -f "$run/clipgen-run.json" ] && [ -z "$dep" ]; then
        if ! cg_dry; then cg_die "$run: not a clipgen run (no clipgen-run.json) and no training job to wait for"; fi
        cg_note "$run does not exist yet; its extraction runs after its training"
    fi
    if [ "$FORCE" = 1 ]; then
        mode=--force
    elif [ -z "$dep" ] && store_complete "$store"; then
        cg_note "$store: complete, skipped (FORCE=1 redoes it)"
        return 0
    elif [ -n "$dep" ] && [ -e "$store" ]; then
        cg_die "$store exists but $run is still being trained: remove the store (and its .shard-* files) or set FORCE=1"
    fi
    tag=$(cg_tag "$store")
    cg_mkdir "$(dirname "$store")"
    if [ "${test_split:-0}" = 1 ]; then  # the test images, decoded once (shared with evaluation and circuits)
        cg_image_cache
        images=("${CG_IMAGES[@]}")
    fi
    if [ -n "${chdir:-}" ]; then where=(--chdir="$chdir"); fi
    cg_res "$EXTRACT_GPUS" "$EXTRACT_TIME" "$EXTRACT_CPUS" "${EXTRACT_MEM:-}"
    if [ ${#images[@]} -gt 0 ]; then dep=$(cg_deps_join "$dep" "$CG_CACHE_DEP"); fi
    cg_submit_cmd "clipgen-extract-$tag" "$dep" "${CG_RES[@]}" "${where[@]}" --array="0-$((shards - 1))" -- \
        "${CG_CLIPGEN[@]}" extract --model-dir "$run" "${epoch[@]}" "$@" --out "$store" --shard auto "$mode" \
        --workers "$((EXTRACT_CPUS - 1))" "${images[@]}" --no-progress "${extra[@]}"
    local array=$CG_JOB
    for ((i = 0; i < shards; i++)); do parts+=("${store%.h5}.shard-$i-of-$shards.h5"); done
    cg_res 0 01:00:00 2
    cg_submit_cmd "clipgen-merge-$tag" "$array" "${CG_RES[@]}" -- \
        "${CG_CLIPGEN[@]}" extract merge "${parts[@]}" --out "$store" "${merge_copy[@]}" --force
    cg_dep_set "$store" "$CG_JOB"
    cg_jobs_add extract "$CG_JOB"
}

for run in "${CG_MECH_RUNS[@]}"; do
    test_split=1 extraction "$run" "$(cg_store_dir "$run")/dn-test.h5" "$EXTRACT_SHARDS" \
        --data "$DOMAINNET" --split test --domains all --layer all
done
if [ "$SAE" = 1 ]; then
    for run in "${CG_SAE_RUNS[@]}"; do
        dir=$(cg_store_dir "$run")
        test_split=1 extraction "$run" "$dir/dn-test-embedding.h5" "$EXTRACT_SHARDS" \
            --data "$DOMAINNET" --split test --domains all --layer embedding
        extraction "$run" "$dir/dn-train-embedding.h5" "$EXTRACT_SHARDS" \
            --data "$DOMAINNET" --split train --domains all --layer embedding --no-text --compression none
        base=$(cg_sae_base "$run")
        if [ -n "$base" ]; then
            if [ ! -f "$base" ] && ! cg_dry && [ -z "$(cg_dep_get "$run" "$(dirname "$run")")" ]; then
                cg_die "$base: base dataset TSV not found (set SAE_BASE_TSV, or SAE_BASE=0 for SAEs without it)"
            fi
            # a base TSV's relative image paths are relative to its folder (as in `clipgen data merge-base`);
            # `clipgen extract --tsv` reads them from the working folder, so the tasks run in the TSV's folder
            chdir=$(dirname "$base") extraction "$run" "$dir/base-train-embedding.h5" "$BASE_SHARDS" --tsv "$base" \
                --layer embedding --no-text --compression none
        fi
    done
fi
