#!/usr/bin/env bash
# scripts/analyses.sh: stage 4 of the reproduction, the mechanistic analyses (SLURM jobs).
#
# From the activation stores of scripts/extract.sh (no model is loaded):
#   CKA         `clipgen cka` on the first of MECH_RUNS (the aligned quickdraw model; Fig. 6a)
#                                                           -> OUT/analysis/cka/<family>-<run>/
#   embeddings  `clipgen embeddings` (UMAP, L2 distances) on every MECH_RUNS store (Fig. 5a/5b)
#                                                           -> OUT/analysis/embeddings/<family>-<run>/
#   SAE         `clipgen sae train` (GPU) on the DomainNet train + base-dataset embeddings of each SAE_RUNS
#               run, validated on its DomainNet test embeddings, then `clipgen sae features` (feature
#               sharing, App. C.1)                          -> OUT/analysis/sae/<family>-<run>/{sae.pt,features/}
# From the model and the images:
#   circuits    `clipgen circuits compute --shard auto` as an array of CIRCUIT_SHARDS GPU tasks over the
#               (domain, class) pairs of CIRCUIT_RUN (default: the first of MECH_RUNS), then `clipgen circuits
#               merge`, and `clipgen circuits nodes` and `clipgen circuits similarity` (Fig. 6b/6c) after it
#                                                           -> OUT/analysis/circuits/<family>-<run>/
# Each job waits for what it reads (the store's merge job, the run's training job) when this runs inside
# scripts/reproduce.sh, or for AFTER. An analysis whose output exists is skipped (FORCE=1 redoes it).
#
# Usage: scripts/analyses.sh [--dry-run] [--help]     (DRY_RUN=1 prints the sbatch calls instead)
#
# Variables:
#   OUT, DOMAINNET          output root and DomainNet root (required)
#   MECH_RUNS, SAE_RUNS     run directories (as in scripts/extract.sh); SAE=0 skips the SAEs, CIRCUITS=0 the
#                           circuits, CKA=0 and EMBEDDINGS=0 those analyses
#   CIRCUIT_RUN             run of the circuit analysis (default: the first of MECH_RUNS)
#   CIRCUIT_SHARDS          array tasks of the circuit computation (16)
#   CIRCUIT_ARGS, SAE_ARGS, CKA_ARGS, EMBEDDING_ARGS   extra options, e.g. SAE_ARGS='--paper'
#   CIRCUITS_TIME, SAE_TIME, ANALYSIS_TIME   time limits: circuit tasks (04:00:00), SAE training (12:00:00),
#                           CPU analyses (02:00:00); CIRCUITS_GPUS, SAE_GPUS (1); ANALYSIS_CPUS (8); ANALYSIS_MEM
#   IMAGE_CACHE, CACHE_SIZE, CACHE_CPUS, CACHE_TIME   the circuit tasks read the test images from the image cache
#                           (one `clipgen data cache` job per domain, shared with evaluation; see lib.sh)
#   FORCE=1                 redo analyses whose outputs exist
#   PARTITION, CPU_PARTITION, ACCOUNT, QOS, SETUP, AFTER, CLIPGEN   as in scripts/lib.sh
#
# Example:
#   OUT=/scratch/clipgen DOMAINNET=/data/domainnet PARTITION=gpu CPU_PARTITION=cpu scripts/analyses.sh
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cg_parse_args "$@"
cg_init_out
cg_require_dir DOMAINNET "the DomainNet root with <domain>_{train,test}.txt"
cg_init_clipgen
cg_init_state
cg_check_after
for f in SAE CIRCUITS CKA EMBEDDINGS; do cg_require_flag "$f" 1; done
cg_require_flag SAE_BASE 1
cg_require_flag FORCE 0
cg_require_int CIRCUIT_SHARDS 16
cg_require_count CIRCUITS_GPUS 1
cg_require_count SAE_GPUS 1
cg_require_int ANALYSIS_CPUS 8
CIRCUITS_TIME=${CIRCUITS_TIME:-04:00:00}
SAE_TIME=${SAE_TIME:-12:00:00}
ANALYSIS_TIME=${ANALYSIS_TIME:-02:00:00}
cg_default_runs
CIRCUIT_RUN=$(cg_abspath "${CIRCUIT_RUN:-${CG_MECH_RUNS[0]}}")
CIRCUIT_RUN=${CIRCUIT_RUN%/}
read -r -a circuit_args <<< "${CIRCUIT_ARGS:-}"
read -r -a sae_args <<< "${SAE_ARGS:-}"
read -r -a cka_args <<< "${CKA_ARGS:-}"
read -r -a embedding_args <<< "${EMBEDDING_ARGS:-}"

input_dep() {  # input_dep FILE: CG_DEP = the job that makes FILE; FILE must exist when there is none
    local file=$1
    CG_DEP=$(cg_dep_get "$file")
    if [ -z "$CG_DEP" ] && [ ! -e "$file" ]; then
        if ! cg_dry; then cg_die "$file not found and no job makes it: run scripts/extract.sh first"; fi
        cg_note "$file does not exist yet"
    fi
}

done_or_forced() {  # done_or_forced OUTPUT: true (skip) when OUTPUT exists and FORCE is off
    if [ "$FORCE" = 0 ] && [ -e "$1" ]; then
        cg_note "$1 exists, skipped (FORCE=1 redoes it)"
        return 0
    fi
    return 1
}

cpu_job() {  # cpu_job NAME DEPS COMMAND...: a CPU-only analysis job
    local name=$1 deps=$2
    shift 2
    cg_res 0 "$ANALYSIS_TIME" "$ANALYSIS_CPUS" "${ANALYSIS_MEM:-}"
    cg_submit_cmd "$name" "$deps" "${CG_RES[@]}" -- "${CG_CLIPGEN[@]}" "$@"
    cg_jobs_add analyses "$CG_JOB"
}

cg_mkdir "$CG_ANALYSIS"
first=${CG_MECH_RUNS[0]}

if [ "$CKA" = 1 ]; then
    store=$(cg_store_dir "$first")/dn-test.h5
    out=$CG_ANALYSIS/cka/$(cg_tag "$first")
    if ! done_or_forced "$out/cka.json"; then
        input_dep "$store"
        cpu_job "clipgen-cka-$(cg_tag "$first")" "$CG_DEP" cka "$store" --out "$out" --force "${cka_args[@]}"
    fi
fi

if [ "$EMBEDDINGS" = 1 ]; then
    for run in "${CG_MECH_RUNS[@]}"; do
        store=$(cg_store_dir "$run")/dn-test.h5
        out=$CG_ANALYSIS/embeddings/$(cg_tag "$run")
        if done_or_forced "$out/embeddings.json"; then continue; fi
        input_dep "$store"
        cpu_job "clipgen-embeddings-$(cg_tag "$run")" "$CG_DEP" embeddings "$store" --out "$out" --force \
            "${embedding_args[@]}"
    done
fi

if [ "$SAE" = 1 ]; then
    for run in "${CG_SAE_RUNS[@]}"; do
        dir=$(cg_store_dir "$run")
        out=$CG_ANALYSIS/sae/$(cg_tag "$run")
        test_store=$dir/dn-test-embedding.h5
        train_stores=("$dir/dn-train-embedding.h5")
        if [ -n "$(cg_sae_base "$run")" ]; then train_stores+=("$dir/base-train-embedding.h5"); fi
        deps=()
        for s in "${train_stores[@]}" "$test_store"; do
            input_dep "$s"
            deps+=("$CG_DEP")
        done
        dep=$(cg_deps_join "${deps[@]}")
        sae_job=""
        if ! done_or_forced "$out/sae.pt"; then
            mode=--resume
            if [ "$FORCE" = 1 ]; then mode=--force; fi
            cg_res "$SAE_GPUS" "$SAE_TIME" 8 "${ANALYSIS_MEM:-}"
            cg_submit_cmd "clipgen-sae-$(cg_tag "$run")" "$dep" "${CG_RES[@]}" -- "${CG_CLIPGEN[@]}" sae train \
                "${train_stores[@]}" --val-store "$test_store" --out "$out" "$mode" "${sae_args[@]}"
            sae_job=$CG_JOB
            cg_jobs_add analyses "$CG_JOB"
        fi
        if ! done_or_forced "$out/features/feature-sharing.json"; then
            # the score row: the run's test domain (the store does not record the run's mixture)
            td=$(cg_run_test_domain "$run")
            test_domain=()
            if [ -n "$td" ]; then test_domain=(--test-domain "$td"); fi
            cg_res "$SAE_GPUS" 01:00:00 8 "${ANALYSIS_MEM:-}"
            cg_submit_cmd "clipgen-sae-features-$(cg_tag "$run")" "$(cg_deps_join "$sae_job" "$dep")" \
                "${CG_RES[@]}" -- "${CG_CLIPGEN[@]}" sae features "$test_store" --sae "$out" \
                --out "$out/features" "${test_domain[@]}" --force
            cg_jobs_add analyses "$CG_JOB"
        fi
    done
fi

if [ "$CIRCUITS" = 1 ]; then
    out=$CG_ANALYSIS/circuits/$(cg_tag "$CIRCUIT_RUN")
    file=$out/circuits.h5
    dep=$(cg_dep_get "$CIRCUIT_RUN" "$(dirname "$CIRCUIT_RUN")")
    if [ ! -f "$CIRCUIT_RUN/clipgen-run.json" ] && [ -z "$dep" ]; then
        if ! cg_dry; then cg_die "CIRCUIT_RUN=$CIRCUIT_RUN: not a clipgen run and no training job to wait for"; fi
        cg_note "$CIRCUIT_RUN does not exist yet; its circuits are computed after its training"
    fi
    merge_job=""
    force=()
    if [ "$FORCE" = 1 ]; then force=(--force); fi
    if ! done_or_forced "$file"; then
        cg_mkdir "$out"
        cg_image_cache  # the test images, decoded once (shared with evaluation and extraction)
        cg_res "$CIRCUITS_GPUS" "$CIRCUITS_TIME" 8 "${ANALYSIS_MEM:-}"
        cg_submit_cmd "clipgen-circuits-$(cg_tag "$CIRCUIT_RUN")" "$(cg_deps_join "$dep" "$CG_CACHE_DEP")" \
            "${CG_RES[@]}" --array="0-$((CIRCUIT_SHARDS - 1))" -- "${CG_CLIPGEN[@]}" circuits compute \
            --model-dir "$CIRCUIT_RUN" --data "$DOMAINNET" --out "$file" --shard auto "${force[@]}" "${CG_IMAGES[@]}" \
            --no-progress "${circuit_args[@]}"
        array=$CG_JOB
        parts=()
        for ((i = 0; i < CIRCUIT_SHARDS; i++)); do parts+=("${file%.h5}.shard-$i-of-$CIRCUIT_SHARDS.h5"); done
        cg_res 0 01:00:00 2
        cg_submit_cmd "clipgen-circuits-merge-$(cg_tag "$CIRCUIT_RUN")" "$array" "${CG_RES[@]}" -- \
            "${CG_CLIPGEN[@]}" circuits merge "${parts[@]}" --out "$file" "${force[@]}"
        merge_job=$CG_JOB
        cg_jobs_add analyses "$CG_JOB"
    fi
    for what in nodes similarity; do
        if done_or_forced "$out/$what"; then continue; fi
        cpu_job "clipgen-circuits-$what-$(cg_tag "$CIRCUIT_RUN")" "$merge_job" circuits "$what" "$file" \
            --out "$out/$what" --force --no-progress
    done
fi
