#!/usr/bin/env bash
# scripts/evaluate.sh: stage 5 of the reproduction, zero-shot evaluation of every checkpoint and the Figure-2 summary.
#
#   1. `clipgen eval grid` over every run family in OUT/runs (clip, clip-aligned, clip-upper, clip-cc12m, ...,
#      supervised): one array task per run and test domain evaluates all its epochs (0..32) on the DomainNet
#      test split of the test domain and real (natural-only runs: all five test domains); work already in a
#      results.json is skipped          -> OUT/runs/<family>/<run>/eval/{zero-shot,supervised}/<domain>/results.json
#   2. after it, `clipgen eval summary` (one CPU job): the Figure-2 table and bar chart, mean +- std over seeds,
#      sample-weighted (OUT/results/summary) and unweighted (OUT/results/summary-unweighted) held-out accuracy
#      -> summary.csv, summary.md, figure2.png, curves.png
# The grid is planned from the checkpoints that exist, so this stage runs after training (scripts/reproduce.sh
# submits it from a small job that waits for the training arrays).
#
# Usage: scripts/evaluate.sh [--dry-run] [--help]     (DRY_RUN=1 prints the tasks and sbatch calls instead)
#
# Variables:
#   OUT, DOMAINNET    output root and DomainNet root (required)
#   IMAGENET_VAL      ImageNet val folder (<wnid>/*.JPEG): adds 1000-way zero-shot accuracy (optional)
#   EVAL_EPOCHS       epochs to evaluate: all, last, N, A-B or a list (all)
#   EVAL_TEMPLATES    template set: paper (86), openai (80), named-domain, simple (paper)
#   EVAL_ARGS         extra options of every task, e.g. '--batch-size 500'
#   EVAL_GPUS, EVAL_CPUS, EVAL_TIME, EVAL_MEM   per task (1, 8, 01:00:00, unset); each task decodes with
#                     EVAL_CPUS - 1 loader workers; PER_CHECKPOINT=1: one task per checkpoint instead of per run and
#                     test domain (each task then reads every image again: the default reads them once per run)
#   IMAGE_CACHE, CACHE_SIZE, CACHE_CPUS, CACHE_TIME   the test images are decoded once, by one CPU job per domain
#                     (`clipgen data cache`, into OUT/cache/test-SIZE/<domain>.h5, skipped when complete), and every
#                     task reads them with --images (IMAGE_CACHE=0: decode the JPEGs in every task); see lib.sh
#   PARTITION, CPU_PARTITION, ACCOUNT, QOS, MAX_PARALLEL, SETUP, AFTER, CLIPGEN   as in scripts/lib.sh
#
# Example:
#   OUT=/scratch/clipgen DOMAINNET=/data/domainnet IMAGENET_VAL=/data/imagenet/val PARTITION=gpu scripts/evaluate.sh
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cg_parse_args "$@"
cg_init_out
cg_require_dir DOMAINNET "the DomainNet root with <domain>_test.txt"
cg_optional_dir IMAGENET_VAL
cg_init_clipgen
cg_init_state
cg_check_after
cg_require_int EVAL_CPUS 8
cg_require_flag PER_CHECKPOINT 0
cg_require_count EVAL_GPUS 1
EVAL_TIME=${EVAL_TIME:-01:00:00}
job=clipgen-eval

families=()
if [ -d "$CG_RUNS" ]; then
    for d in "$CG_RUNS"/*/; do families+=("${d%/}"); done
fi
if [ ${#families[@]} -eq 0 ] && ! cg_dry; then
    cg_die "no run families in $CG_RUNS: run scripts/train.sh (and let it finish) first"
fi
cg_image_cache
opts=(--data-root "$DOMAINNET" --epochs "${EVAL_EPOCHS:-all}" --templates "${EVAL_TEMPLATES:-paper}"
    --name "$job" --time "$EVAL_TIME" --cpus-per-task "$EVAL_CPUS" --gpus "$EVAL_GPUS")
if [ -n "${IMAGENET_VAL:-}" ]; then opts+=(--imagenet "$IMAGENET_VAL"); fi
if [ -n "${EVAL_ARGS:-}" ]; then opts+=(--task-args "$EVAL_ARGS"); fi
opts+=("${CG_IMAGES[@]}")
if [ "$PER_CHECKPOINT" = 1 ]; then opts+=(--per-checkpoint); fi
if [ "$EVAL_GPUS" -gt 0 ] && [ -n "${PARTITION:-}" ]; then opts+=(--partition "$PARTITION"); fi
if [ "$EVAL_GPUS" = 0 ] && [ -n "${CPU_PARTITION:-${PARTITION:-}}" ]; then
    opts+=(--partition "${CPU_PARTITION:-$PARTITION}")
fi
if [ -n "${ACCOUNT:-}" ]; then opts+=(--account "$ACCOUNT"); fi
if [ -n "${QOS:-}" ]; then opts+=(--qos "$QOS"); fi
if [ -n "${EVAL_MEM:-}" ]; then opts+=(--mem "$EVAL_MEM"); fi
if [ -n "${MAX_PARALLEL:-}" ]; then opts+=(--max-parallel "$MAX_PARALLEL"); fi
if [ -n "${SETUP:-}" ]; then opts+=(--setup "$SETUP"); fi

eval_job=""
eval_deps=$(cg_deps_join "${AFTER:-}" "$CG_CACHE_DEP")
grid=("${CG_CLIPGEN[@]}" eval grid "${families[@]}" "${opts[@]}")
if [ ${#families[@]} -eq 0 ]; then
    if ! cg_dry; then cg_die "no run families in $CG_RUNS: run scripts/train.sh (and let it finish) first"; fi
    printf '+ %s\n' "$(cg_quote "${CG_CLIPGEN[@]}" eval grid "$CG_RUNS/clip" "$CG_RUNS/..." "${opts[@]}" \
        --jobs-dir "$CG_BATCH_DIR")"
    cg_note "no runs in $CG_RUNS yet: the evaluation tasks are planned once training has finished"
    cg_submit "$job" "$eval_deps" -- "$CG_BATCH_DIR/$job.sbatch"
    eval_job=$CG_JOB
else
    if cg_dry; then  # eval grid --dry-run plans and writes nothing
        printf '+ %s\n' "$(cg_quote "${grid[@]}" --jobs-dir "$CG_BATCH_DIR")"
        listing=$("${grid[@]}" --jobs-dir "$CG_BATCH_DIR" --dry-run)
        printf '%s\n' "$listing" | sed 's/^/#   /'
    else
        mkdir -p "$CG_BATCH_DIR"
        listing=$(cg_run "${grid[@]}" --jobs-dir "$CG_BATCH_DIR")
        printf '%s\n' "$listing" | grep -v '^/' || true
    fi
    if printf '%s\n' "$listing" | grep -q '^nothing to do'; then
        cg_note "evaluation: every requested epoch is evaluated already"
    else
        cg_submit "$job" "$eval_deps" -- "$CG_BATCH_DIR/$job.sbatch"
        eval_job=$CG_JOB
    fi
fi

summary_inputs=("${families[@]}")
if [ ${#summary_inputs[@]} -eq 0 ]; then summary_inputs=("$CG_RUNS"); fi
cg_res 0 00:30:00 2
for metric in ood_acc ood_acc_unweighted; do
    out=$CG_RESULTS/summary
    if [ "$metric" != ood_acc ]; then out=$CG_RESULTS/summary-unweighted; fi
    cg_submit_cmd "clipgen-summary-${metric//_/-}" "$(cg_deps_join "$eval_job" "${AFTER:-}")" "${CG_RES[@]}" -- \
        "${CG_CLIPGEN[@]}" eval summary "${summary_inputs[@]}" --out "$out" --metric "$metric" --force
    cg_jobs_add eval "$CG_JOB"
done
