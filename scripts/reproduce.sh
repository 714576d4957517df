#!/usr/bin/env bash
# scripts/reproduce.sh: the whole reproduction on a SLURM cluster, every stage chained with --dependency=afterok.
#
# Stages, in this order (each is also a script of its own; see its --help):
#   data      scripts/prepare_data.sh  captions, ImageNet-Captions, mixtures (one CPU job, or here with DATA_LOCAL=1)
#   train     scripts/train.sh         the training arrays (main grid, aligned quickdraw model, optional families)
#   extract   scripts/extract.sh       sharded extraction arrays + merge jobs, each after its run's training task
#   analyses  scripts/analyses.sh      CKA, embeddings, SAEs (after their stores), circuits array + merge + figures
#   eval      scripts/evaluate.sh      zero-shot evaluation array over every checkpoint, then the Figure-2 summary
# Everything that can be submitted at once is: extraction and analyses wait on the exact jobs they read. Two
# stages are planned from files an earlier job writes (train reads the mixture index, eval the checkpoints);
# while such a job is pending, the driver submits a small continuation job, `scripts/reproduce.sh --stages
# <the rest>`, that waits for it (afterok) and submits the rest. Every stage skips work that is done, so rerunning
# the driver after a failure resubmits only what is missing (each training task resumes its run).
#
# Usage: scripts/reproduce.sh [--dry-run] [--from STAGE] [--stages a,b,...] [--help]
#   --dry-run        print every command and sbatch submission (with placeholder job ids dry-N) instead
#   --from STAGE     start at STAGE (data, train, extract, analyses or eval)
#   --stages LIST    run only these stages (comma-separated, kept in the order above)
#
# Variables: those of the stage scripts (OUT and DOMAINNET are required; the base dataset: IMAGENET_TRAIN +
# IMAGENET_CAPTIONS_JSON or BASE_TRAIN; optional CC12M_TSV, CC3M_TSV, IMAGENET_SKETCH, IMAGENET_VAL; SLURM:
# PARTITION, CPU_PARTITION, ACCOUNT, QOS, GPUS, TIME, SETUP; SEEDS, PRESET, CLIPGEN ...), plus
#   DATA_LOCAL=1                    run the data stage in this shell instead of as a CPU job
#   DATA_TIME, DATA_CPUS, DATA_MEM  resources of the data job (06:00:00, 8, unset)
#   AFTER                           job ids the first submitted job waits for
# Job scripts, task lists and SLURM logs go to OUT/jobs; OUT/jobs/submitted.tsv lists every submission.
#
# Example:
#   export OUT=/scratch/clipgen DOMAINNET=/data/domainnet IMAGENET_TRAIN=/data/imagenet/train \
#          IMAGENET_CAPTIONS_JSON=/data/imagenet_captions.json PARTITION=gpu CPU_PARTITION=cpu ACCOUNT=myproj \
#          SETUP='source ~/clipgen/.venv/bin/activate'
#   scripts/reproduce.sh --dry-run      # check what would be submitted
#   scripts/reproduce.sh
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ALL_STAGES=(data train extract analyses eval)
from="" only=""
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --from) [ $# -ge 2 ] || cg_die "--from needs a stage (${ALL_STAGES[*]})"; from=$2; shift ;;
        --from=*) from=${1#--from=} ;;
        --stages) [ $# -ge 2 ] || cg_die "--stages needs a list (e.g. train,eval)"; only=$2; shift ;;
        --stages=*) only=${1#--stages=} ;;
        *) args+=("$1") ;;
    esac
    shift
done
cg_parse_args "${args[@]}"

is_stage() {
    local s
    for s in "${ALL_STAGES[@]}"; do [ "$s" = "$1" ] && return 0; done
    return 1
}
if [ -n "$from" ] && ! is_stage "$from"; then cg_die "--from $from: unknown stage (${ALL_STAGES[*]})"; fi
wanted=()
if [ -n "$only" ]; then
    IFS=, read -r -a wanted <<< "$only"
    for s in "${wanted[@]}"; do is_stage "$s" || cg_die "--stages: unknown stage '$s' (${ALL_STAGES[*]})"; done
fi
stages=()
started=0
for s in "${ALL_STAGES[@]}"; do
    if [ -z "$from" ] || [ "$s" = "$from" ]; then started=1; fi
    [ "$started" = 1 ] || continue
    if [ ${#wanted[@]} -gt 0 ] && [[ " ${wanted[*]} " != *" $s "* ]]; then continue; fi
    stages+=("$s")
done
[ ${#stages[@]} -gt 0 ] || cg_die "no stage selected (--from $from --stages $only)"

# Check the inputs every stage needs before anything is submitted.
cg_init_out
cg_require_dir DOMAINNET "the DomainNet root with <domain>_{train,test}.txt"
cg_init_clipgen
cg_check_after
cg_require_flag DATA_LOCAL 0
cg_require_int DATA_CPUS 8
CG_STATE_DIR="" CG_BATCH_DIR=""  # a fresh record of job ids and job folder, also in a continuation job
cg_init_state
cg_mkdir "$CG_JOBS"

pending=$AFTER  # jobs whose outputs the next planned stage (train, eval) reads
cg_note "stages: ${stages[*]}"

continuation() {  # continuation INDEX: a job that runs the stages from INDEX on once `pending` succeeded
    local rest
    rest=$(IFS=,; echo "${stages[*]:$1}")
    cg_res 0 01:00:00 2
    cg_submit_cmd "clipgen-continue-${stages[$1]}" "$pending" "${CG_RES[@]}" \
        --export=ALL,AFTER=,CG_STATE_DIR=,CG_BATCH_DIR= -- "$CG_SCRIPTS/reproduce.sh" --stages "$rest"
}

run_stage() {  # run_stage SCRIPT: a stage script in this shell's job-id record, with no extra dependency
    AFTER="" "$CG_SCRIPTS/$1"
}

for i in "${!stages[@]}"; do
    stage=${stages[$i]}
    cg_note "=== stage $stage"
    case "$stage" in
        train | eval)
            if [ "$stage" = eval ]; then pending=$(cg_deps_join "$pending" "$(cg_jobs_get train)"); fi
            if [ -n "$pending" ]; then
                continuation "$i"
                if ! cg_dry; then
                    cg_note "the continuation job $CG_JOB submits the stages from $stage on once $pending succeeded"
                    break
                fi
                cg_note "dry run: what the continuation job $CG_JOB would submit once $pending succeeded:"
                pending=""
                rm -f "$CG_STATE_DIR/jobs.train"
            fi
            if [ "$stage" = train ]; then run_stage train.sh; else run_stage evaluate.sh; fi
            ;;
        data)
            rc=0
            "$CG_SCRIPTS/prepare_data.sh" --check || rc=$?
            if [ "$rc" = 0 ]; then continue; fi
            if [ "$rc" != 1 ]; then exit "$rc"; fi  # bad input: the message is above
            if [ "$DATA_LOCAL" = 1 ]; then
                run_stage prepare_data.sh
            else
                cg_res 0 "${DATA_TIME:-06:00:00}" "$DATA_CPUS" "${DATA_MEM:-}"
                cg_submit_cmd clipgen-data "$pending" "${CG_RES[@]}" -- "$CG_SCRIPTS/prepare_data.sh"
                pending=$CG_JOB
            fi
            ;;
        extract) run_stage extract.sh ;;
        analyses) run_stage analyses.sh ;;
    esac
done

if cg_dry; then
    cg_note "dry run: nothing was submitted or written"
elif [ -f "$CG_JOBS/submitted.tsv" ]; then
    cg_note "submissions are listed in $CG_JOBS/submitted.tsv; SLURM logs go to $CG_LOGS"
fi
