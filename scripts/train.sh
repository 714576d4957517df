#!/usr/bin/env bash
# scripts/train.sh: stage 2 of the reproduction, the training arrays (submitted to SLURM).
#
# Submits one array job per experiment family; `clipgen train grid` plans and writes each CLIP array (it skips
# runs whose last checkpoint exists, and every task resumes a stopped run), this script submits it:
#   clip          the main grid of Figure 2: natural-only + {CG low, CG high, leave-out-domain} x 5 test domains
#                 x SEEDS = 48 runs with the default seeds 0,1,2           -> OUT/runs/clip/<setup>[-<domain>]-s<seed>
#   clip-aligned  CG high-diversity quickdraw with aligned captions, seed 0: the model of the CKA, circuit and
#                 UMAP-b analyses (ALIGNED=0 skips it)                 -> OUT/runs/clip-aligned/aligned-cg-high-...
#   clip-upper    upper bounds, CG low/high with the held-out classes kept (UPPER_BOUNDS=1)
#   clip-cc12m    the seven CC12M runs, seed 0, preset ccxm (when CC12M_TSV is set; CC3M_TSV likewise)
#   supervised    the supervised baselines (SUPERVISED=1): cg-low, cg-high, leave-out-domain x 5 x SEEDS
#   clip-in-sketch  every ImageNet-Sketch mixture, seed 0 (when IMAGENET_SKETCH is set)
# Job scripts and task lists go to OUT/jobs, SLURM logs to OUT/jobs/logs, submissions to OUT/jobs/submitted.tsv.
#
# Usage: scripts/train.sh [--dry-run] [--help]     (DRY_RUN=1 prints the task lists and sbatch calls instead)
#
# Variables:
#   OUT                 output root (required; reads OUT/data/mixtures*, written by scripts/prepare_data.sh)
#   PRESET              training preset of the CLIP families (imagenet-captions; synthetic for a smoke test)
#   SEEDS               seeds of the main grid, upper bounds and supervised runs (0,1,2)
#   TEST_DOMAINS        test domains of the main grid (clipart,infograph,painting,quickdraw,sketch)
#   GPUS                GPUs per CLIP run (default: the preset's, 4; one srun task per GPU)
#   CC_GPUS             GPUs per CC12M/CC3M run (default: the ccxm preset's, 8)
#   TIME                time limit per training task (24:00:00)
#   MODEL, EPOCHS       override the preset's model and epochs for every CLIP run
#   ALIGNED, UPPER_BOUNDS, SUPERVISED   1/0: train these families (1, 0, 0)
#   CC12M_TSV, CC3M_TSV, CC12M_VAL, CC3M_VAL, IMAGENET_SKETCH  the optional families (and their val TSVs)
#   SUPERVISED_PRESET, SUPERVISED_GPUS   supervised preset (imagenet-captions) and GPUs per run (4)
#   PARTITION, ACCOUNT, QOS, MEM, MAX_PARALLEL, CPUS_PER_GPU (6), SETUP   SLURM settings of every task
#   AFTER               job ids every array waits for (--dependency=afterok:AFTER), e.g. the data job
#   CLIPGEN             the clipgen command (default: clipgen on PATH)
#
# Example:
#   OUT=/scratch/clipgen PARTITION=gpu ACCOUNT=myproj SETUP='source ~/clipgen/.venv/bin/activate' scripts/train.sh
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cg_parse_args "$@"
cg_init_out
cg_init_clipgen
cg_init_state
cg_check_after
PRESET=${PRESET:-imagenet-captions}
SEEDS=${SEEDS:-0,1,2}
TEST_DOMAINS=${TEST_DOMAINS:-clipart,infograph,painting,quickdraw,sketch}
TIME=${TIME:-24:00:00}
cg_require_flag ALIGNED 1
cg_require_flag UPPER_BOUNDS 0
cg_require_flag SUPERVISED 0
cg_require_int CPUS_PER_GPU 6
[[ $SEEDS =~ ^[0-9]+(,[0-9]+)*$ ]] || cg_die "SEEDS=$SEEDS: not a comma-separated list of integers"
for v in GPUS CC_GPUS SUPERVISED_GPUS MAX_PARALLEL; do
    if [ -n "${!v:-}" ] && ! [[ ${!v} =~ ^[0-9]+$ ]]; then cg_die "$v=${!v}: not an integer"; fi
done
cg_optional_file CC12M_VAL
cg_optional_file CC3M_VAL
if [ -z "${SUPERVISED_PRESET:-}" ]; then
    if [ "$PRESET" = synthetic ]; then SUPERVISED_PRESET=synthetic; else SUPERVISED_PRESET=imagenet-captions; fi
fi

# Options of every `clipgen train grid` (its job script holds the resources).
slurm=(--time "$TIME" --cpus-per-task "$CPUS_PER_GPU")
if [ -n "${PARTITION:-}" ]; then slurm+=(--partition "$PARTITION"); fi
if [ -n "${ACCOUNT:-}" ]; then slurm+=(--account "$ACCOUNT"); fi
if [ -n "${QOS:-}" ]; then slurm+=(--qos "$QOS"); fi
if [ -n "${MEM:-}" ]; then slurm+=(--mem "$MEM"); fi
if [ -n "${MAX_PARALLEL:-}" ]; then slurm+=(--max-parallel "$MAX_PARALLEL"); fi
if [ -n "${SETUP:-}" ]; then slurm+=(--setup-cmd "$SETUP"); fi
model=()
if [ -n "${MODEL:-}" ]; then model+=(--model "$MODEL"); fi
if [ -n "${EPOCHS:-}" ]; then model+=(--epochs "$EPOCHS"); fi
array_limit=""
if [ -n "${MAX_PARALLEL:-}" ]; then array_limit=%$MAX_PARALLEL; fi

submitted=0

grid_family() {  # grid_family FAMILY INDEX_FOLDER [clipgen train grid options...]: plan, write and submit one array
    local family=$1 index=$2 logs job listing names=() i
    shift 2
    logs=$CG_RUNS/$family
    job=clipgen-train-$family
    local cmd=("${CG_CLIPGEN[@]}" train grid --index "$index" --logs "$logs" --out "$CG_BATCH_DIR" --job-name "$job"
        "$@" "${model[@]}" "${slurm[@]}")
    if [ ! -f "$index/mixtures.json" ]; then
        if ! cg_dry; then cg_die "$index/mixtures.json not found: run scripts/prepare_data.sh first"; fi
        printf '+ %s\n' "$(cg_quote "${cmd[@]}")"
        cg_note "$family: $index/mixtures.json does not exist yet (the data stage writes it); tasks planned then"
        cg_submit "$job" "$AFTER" -- "$CG_BATCH_DIR/$job.sbatch"
        cg_dep_set "$logs" "$CG_JOB"
        cg_jobs_add train "$CG_JOB"
        submitted=$((submitted + 1))
        return 0
    fi
    listing=$("${cmd[@]}" --dry-run)
    # the listing's last line is the summary, printed once as the note below
    if cg_dry; then printf '%s\n' "$listing" | sed '$d' | sed 's/^/#   /'; fi
    cg_note "$family: $(printf '%s\n' "$listing" | tail -n 1)"
    mapfile -t names < <(printf '%s\n' "$listing" | sed -nE 's/^\[todo\] ([^:]+): .*/\1/p')
    if [ ${#names[@]} -eq 0 ]; then return 0; fi
    cg_run "${cmd[@]}"
    if ! cg_dry; then  # the array's task order is the job's own task list
        mapfile -t names < <(sed -nE 's/.* --name ([^ ]+) .*/\1/p' "$CG_BATCH_DIR/$job.tasks")
    fi
    cg_submit "$job" "$AFTER" -- "$CG_BATCH_DIR/$job.sbatch"
    for i in "${!names[@]}"; do cg_dep_set "$logs/${names[$i]}" "${CG_JOB}_$i"; done
    cg_dep_set "$logs" "$CG_JOB"
    cg_jobs_add train "$CG_JOB"
    submitted=$((submitted + 1))
}

tasks_family() {  # tasks_family FAMILY GPUS TASK...: an array job over a task list (scripts/slurm/tasks.sbatch)
    local family=$1 gpus=$2 job file
    shift 2
    job=clipgen-train-$family
    file=$CG_BATCH_DIR/$job.tasks
    cg_note "$family: $# runs to train"
    if [ $# -eq 0 ]; then return 0; fi
    cg_write_tasks "$file" "$@"
    cg_res "$gpus" "$TIME" "$((CPUS_PER_GPU * (gpus > 0 ? gpus : 1)))" "${MEM:-}"
    cg_submit "$job" "$AFTER" "${CG_RES[@]}" --array="0-$(($# - 1))$array_limit" -- "$CG_TASKS_SBATCH" "$file"
    cg_dep_set "$CG_RUNS/$family" "$CG_JOB"
    cg_jobs_add train "$CG_JOB"
    submitted=$((submitted + 1))
}

preset_gpus() {  # the GPUs per run of a preset (the paper's)
    case "$1" in imagenet-captions) echo 4 ;; ccxm) echo 8 ;; *) echo 0 ;; esac
}

gpus=()
if [ -n "${GPUS:-}" ]; then gpus=(--gpus "$GPUS"); fi

grid_family clip "$CG_MIX" --preset "$PRESET" --seeds "$SEEDS" --test-domains "$TEST_DOMAINS" "${gpus[@]}"
if [ "$ALIGNED" = 1 ]; then
    grid_family clip-aligned "$CG_MIX" --preset "$PRESET" --aligned --setups cg-high --test-domains quickdraw \
        --seeds "${ALIGNED_SEEDS:-0}" --name-prefix aligned- "${gpus[@]}"
fi
if [ "$UPPER_BOUNDS" = 1 ]; then
    grid_family clip-upper "$CG_MIX" --preset "$PRESET" --pseudo --setups cg-low,cg-high \
        --test-domains "$TEST_DOMAINS" --seeds "$SEEDS" --name-prefix upper- "${gpus[@]}"
fi
for cc in cc12m cc3m; do
    var=${cc^^}_TSV
    if [ -z "${!var:-}" ]; then continue; fi
    val_var=${cc^^}_VAL
    val=(--no-val)
    if [ -n "${!val_var:-}" ]; then val=(--val "${!val_var}"); fi
    cc_gpus=()
    if [ -n "${CC_GPUS:-}" ]; then cc_gpus=(--gpus "$CC_GPUS"); fi
    grid_family "clip-$cc" "$CG_DATA/mixtures-$cc" --preset ccxm --test-domains clipart,sketch \
        --seeds "${CC_SEEDS:-0}" --name-prefix "$cc-" "${val[@]}" "${cc_gpus[@]}"
done

if [ "$SUPERVISED" = 1 ]; then
    logs=$CG_RUNS/supervised
    sgpus=${SUPERVISED_GPUS:-$(preset_gpus "$SUPERVISED_PRESET")}
    # the mixtures of each run come from the CLIP grid's own planning (mixtures.json), never from file names
    plan=("${CG_CLIPGEN[@]}" train grid --index "$CG_MIX" --logs "$logs" --preset "$PRESET" --seeds "$SEEDS"
        --setups "${SUPERVISED_SETUPS:-cg-low,cg-high,leave-out-domain}" --test-domains "$TEST_DOMAINS" --dry-run)
    tasks=()
    if [ -f "$CG_MIX/mixtures.json" ]; then
        while read -r name file; do
            if cg_run_done "$logs/$name"; then continue; fi
            t=("${CG_CLIPGEN[@]}" train supervised --train "$CG_MIX/$file")
            val=${file/-train-/-val-}
            if [ -f "$CG_MIX/$val" ]; then t+=(--val "$CG_MIX/$val"); fi
            t+=(--logs "$logs" --name "$name" --preset "$SUPERVISED_PRESET" --seed "${name##*-s}" --resume --quiet)
            if [ "$sgpus" -gt 0 ]; then t+=(--gpus "$sgpus"); fi
            tasks+=("$(cg_quote "${t[@]}")")
        done < <("${plan[@]}" | sed -nE 's/^\[(todo|done)\] ([^:]+): ([^ ]+)  \$ .*/\2 \3/p')
        tasks_family supervised "$sgpus" "${tasks[@]}"
    elif cg_dry; then
        cg_note "supervised: planned from $CG_MIX/mixtures.json once the data stage has run:"
        printf '+ %s\n' "$(cg_quote "${plan[@]}")"
        cg_write_tasks "$CG_BATCH_DIR/clipgen-train-supervised.tasks" \
            "$(cg_quote "${CG_CLIPGEN[@]}" train supervised --train '<mixture>' --logs "$logs" --name '<run>' \
                --preset "$SUPERVISED_PRESET" --resume --quiet)"
        cg_res "$sgpus" "$TIME" "$CPUS_PER_GPU" "${MEM:-}"
        cg_submit clipgen-train-supervised "$AFTER" "${CG_RES[@]}" --array="0-N$array_limit" -- \
            "$CG_TASKS_SBATCH" "$CG_BATCH_DIR/clipgen-train-supervised.tasks"
        cg_jobs_add train "$CG_JOB"
    else
        cg_die "$CG_MIX/mixtures.json not found: run scripts/prepare_data.sh first"
    fi
fi

if [ -n "${IMAGENET_SKETCH:-}" ]; then
    logs=$CG_RUNS/clip-in-sketch
    sk_gpus=${GPUS:-$(preset_gpus "$PRESET")}
    tasks=()
    shopt -s nullglob
    for f in "$CG_DATA"/mixtures-in-sketch/combined-captions-train-*.tsv; do
        ident=$(basename "$f" .tsv)
        ident=${ident#combined-captions-train-}
        for seed in ${IN_SKETCH_SEEDS:-0}; do
            name=$ident-s$seed
            if cg_run_done "$logs/$name"; then continue; fi
            t=("${CG_CLIPGEN[@]}" train clip --train "$f")
            val=$(dirname "$f")/combined-captions-val-$ident.tsv
            if [ -f "$val" ]; then t+=(--val "$val"); fi
            t+=(--logs "$logs" --name "$name" --preset "$PRESET" --seed "$seed" --resume --log live "${model[@]}")
            if [ "$sk_gpus" -gt 0 ]; then t+=(--gpus "$sk_gpus"); fi
            tasks+=("$(cg_quote "${t[@]}")")
        done
    done
    shopt -u nullglob
    if [ ${#tasks[@]} -eq 0 ] && [ ! -f "$CG_DATA/mixtures-in-sketch/mixtures.json" ]; then
        if ! cg_dry; then cg_die "$CG_DATA/mixtures-in-sketch has no mixtures: run scripts/prepare_data.sh first"; fi
        cg_note "clip-in-sketch: the ImageNet-Sketch mixtures do not exist yet; they are listed when this runs"
    else
        tasks_family clip-in-sketch "$sk_gpus" "${tasks[@]}"
    fi
fi

if [ "$submitted" = 0 ]; then
    cg_note "training: every run is complete; nothing submitted"
fi
