# shellcheck shell=bash
# scripts/lib.sh: the common parts of the clipgen pipeline scripts. Sourced by every script, never run.
#
# What it provides:
#   * options every script takes: --dry-run (or DRY_RUN=1) and --help (prints the script's header);
#   * one-line errors: `error: ...` on stderr and exit code 2 for a missing variable or path (cg_require*);
#   * the dry-run wrapper cg_run (prints `+ COMMAND`; runs it unless DRY_RUN=1) and the clipgen command
#     (CLIPGEN, default `clipgen` on PATH, else the project's .venv/bin/clipgen, resolved to an absolute path so that
#     SLURM jobs run the same one);
#   * the sbatch wrapper cg_submit (`sbatch --parsable`, --dependency=afterok:..., resources, logs; sets CG_JOB
#     to the job id, or to a placeholder `dry-N` in a dry run) and the resource options (cg_res);
#   * job-id bookkeeping between the stages of one driver run (cg_dep_set / cg_dep_get / cg_jobs_add);
#   * the output layout under OUT and the published mixture identifiers.
#
# Variables read here (all optional): DRY_RUN (1: print every command and submission instead of running it),
# CLIPGEN, PARTITION (GPU jobs), CPU_PARTITION (CPU-only jobs; default PARTITION), ACCOUNT, QOS, SETUP (shell
# line every job runs first, e.g. `source /path/.venv/bin/activate`), FORCE (1: redo work whose output exists).

CG_SELF=${BASH_SOURCE[1]:-$0}
CG_SCRIPTS=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CG_JOB_SBATCH=$CG_SCRIPTS/slurm/job.sbatch
CG_TASKS_SBATCH=$CG_SCRIPTS/slurm/tasks.sbatch

#: DomainNet domains in the paper's letter order, and the five test domains.
CG_DOMAINS=(clipart infograph painting quickdraw real sketch)
CG_TEST_DOMAINS=(clipart infograph painting quickdraw sketch)

cg_die() {
    printf 'error: %s\n' "$*" >&2
    exit 2
}

cg_note() { printf '# %s\n' "$*"; }

cg_dry() { [ "${DRY_RUN:-0}" = 1 ]; }

cg_usage() {  # the comment block at the top of a script, without the '#'
    awk 'NR == 1 && /^#!/ { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$1"
}

cg_check_dry_run() {
    case "${DRY_RUN:-0}" in
        0 | 1 | "") ;;
        *) cg_die "DRY_RUN=${DRY_RUN}: use 1 (print the commands) or 0 (run them)" ;;
    esac
    DRY_RUN=${DRY_RUN:-0}
    export DRY_RUN
}

cg_parse_args() {  # the options of every stage script
    while [ $# -gt 0 ]; do
        case "$1" in
            -n | --dry-run) DRY_RUN=1 ;;
            -h | --help) cg_usage "$CG_SELF"; exit 0 ;;
            *) cg_die "$(basename "$CG_SELF"): unknown argument '$1' (options: --dry-run, --help)" ;;
        esac
        shift
    done
    cg_check_dry_run
}

cg_abspath() {
    case "$1" in
        /*) printf '%s' "$1" ;;
        *) printf '%s/%s' "$PWD" "${1#./}" ;;
    esac
}

cg_require() {  # cg_require NAME [DESCRIPTION]: NAME must be set and not empty
    local name=$1 what=${2:-}
    if [ -z "${!name:-}" ]; then
        cg_die "$name is not set${what:+ ($what)}; see '$(basename "$CG_SELF") --help'"
    fi
}

cg_require_dir() {  # cg_require_dir NAME [DESCRIPTION]: set, an existing folder; made absolute
    cg_require "$@"
    local name=$1
    [ -d "${!name}" ] || cg_die "$name=${!name}: no such directory"
    printf -v "$name" '%s' "$(cg_abspath "${!name}")"
    export "${name?}"
}

cg_require_file() {  # cg_require_file NAME [DESCRIPTION]: set, an existing file; made absolute
    cg_require "$@"
    local name=$1
    [ -f "${!name}" ] || cg_die "$name=${!name}: no such file"
    printf -v "$name" '%s' "$(cg_abspath "${!name}")"
    export "${name?}"
}

cg_optional_file() {  # cg_optional_file NAME: if set, an existing file (made absolute)
    local name=$1
    if [ -n "${!name:-}" ]; then cg_require_file "$name"; fi
}

cg_optional_dir() {
    local name=$1
    if [ -n "${!name:-}" ]; then cg_require_dir "$name"; fi
}

cg_require_int() {  # cg_require_int NAME DEFAULT: a positive integer
    local name=$1
    if [ -z "${!name:-}" ]; then printf -v "$name" '%s' "$2"; fi
    [[ ${!name} =~ ^[1-9][0-9]*$ ]] || cg_die "$name=${!name}: not a positive integer"
}

cg_require_count() {  # cg_require_count NAME DEFAULT: a non-negative integer (e.g. GPUs, 0 for none)
    local name=$1
    if [ -z "${!name:-}" ]; then printf -v "$name" '%s' "$2"; fi
    [[ ${!name} =~ ^[0-9]+$ ]] || cg_die "$name=${!name}: not a non-negative integer"
}

cg_require_flag() {  # cg_require_flag NAME DEFAULT: 0 or 1
    local name=$1
    if [ -z "${!name:-}" ]; then printf -v "$name" '%s' "$2"; fi
    case "${!name}" in 0 | 1) ;; *) cg_die "$name=${!name}: use 0 or 1" ;; esac
}

# ---------------------------------------------------------------------------------------------------------------
# Output layout

cg_init_out() {  # OUT is required; everything goes below it
    cg_require OUT "the output root of the pipeline"
    OUT=$(cg_abspath "$OUT")
    OUT=${OUT%/}
    if [ -e "$OUT" ] && [ ! -d "$OUT" ]; then cg_die "OUT=$OUT exists and is not a directory"; fi
    CG_DATA=$OUT/data
    CG_MIX=$CG_DATA/mixtures
    CG_RUNS=$OUT/runs
    CG_STORES=$OUT/stores
    CG_ANALYSIS=$OUT/analysis
    CG_RESULTS=$OUT/results
    CG_JOBS=$OUT/jobs
    CG_LOGS=$CG_JOBS/logs
    export OUT
}

cg_tag() {  # a short job-name tag of a run directory or a store: <family>-<run>
    local p=${1%/}
    p=${p%.h5}
    printf '%s-%s' "$(basename "$(dirname "$p")")" "$(basename "$p")"
}

cg_store_dir() {  # the store folder of a run directory: OUT/stores/<family>/<run>
    local r=${1%/}
    printf '%s/%s/%s' "$CG_STORES" "$(basename "$(dirname "$r")")" "$(basename "$r")"
}

cg_default_runs() {  # MECH_RUNS and SAE_RUNS (space-separated run directories), unless set
    local fam=clip prefix="" s x
    if [ -z "${MECH_RUNS:-}" ]; then  # the aligned quickdraw model (CKA, circuits, UMAP-b), UMAP-a's standard
        MECH_RUNS="$CG_RUNS/clip-aligned/aligned-cg-high-quickdraw-s0 $CG_RUNS/clip/cg-high-quickdraw-s0"
    fi
    if [ -z "${SAE_RUNS:-}" ]; then  # CG high and leave-out-domain for clipart and sketch, seed 0
        if [ -n "${CC12M_TSV:-}" ]; then fam=clip-cc12m prefix=cc12m-; fi
        SAE_RUNS=""
        for s in cg-high leave-out-domain; do
            for x in clipart sketch; do SAE_RUNS+="${SAE_RUNS:+ }$CG_RUNS/$fam/$prefix$s-$x-s0"; done
        done
    fi
    read -r -a CG_MECH_RUNS <<< "$MECH_RUNS"
    read -r -a CG_SAE_RUNS <<< "$SAE_RUNS"
    [ ${#CG_MECH_RUNS[@]} -gt 0 ] || cg_die "MECH_RUNS is empty"
    local i
    for i in "${!CG_MECH_RUNS[@]}"; do CG_MECH_RUNS[i]=$(cg_abspath "${CG_MECH_RUNS[i]%/}"); done
    for i in "${!CG_SAE_RUNS[@]}"; do CG_SAE_RUNS[i]=$(cg_abspath "${CG_SAE_RUNS[i]%/}"); done
}

cg_sae_base() {  # cg_sae_base RUN: the base-dataset TSV whose embeddings join the SAE training rows (may be empty)
    if [ "${SAE_BASE:-1}" = 0 ]; then return 0; fi
    if [ -n "${SAE_BASE_TSV:-}" ]; then printf '%s' "$SAE_BASE_TSV"; return 0; fi
    case "$(basename "$(dirname "$1")")" in
        clip-cc12m) printf '%s' "${CC12M_TSV:-}" ;;
        clip-cc3m) printf '%s' "${CC3M_TSV:-}" ;;
        *) if [ -n "${BASE_TRAIN:-}" ]; then printf '%s' "$BASE_TRAIN"
           else printf '%s' "$CG_DATA/imagenet-captions/in-captions-train.tsv"; fi ;;
    esac
}

cg_run_test_domain() {  # cg_run_test_domain RUN: the test domain of a run, from its manifest or its grid name
    local run=${1%/} td="" name
    if [ -f "$run/clipgen-run.json" ]; then
        td=$(grep -o '"test_domain": "[a-z]*"' "$run/clipgen-run.json" | head -n 1 | sed 's/.*: "\(.*\)"/\1/') || true
    fi
    if [ -z "$td" ]; then  # clipgen train grid names runs <prefix><setup>-<test domain>-s<seed>
        name=$(basename "$run")
        if [[ $name =~ -(clipart|infograph|painting|quickdraw|sketch)-s[0-9]+$ ]]; then td=${BASH_REMATCH[1]}; fi
    fi
    printf '%s' "$td"
}

cg_identifier() {  # cg_identifier SETUP [TEST_DOMAIN]: the published mixture identifier
    local setup=$1 x=${2:-} d letters=""
    case "$setup" in
        natural-only) printf 'lso-real-only'; return 0 ;;
        cg-low) for d in "${CG_DOMAINS[@]}"; do
                    if [ "$d" = real ] || [ "$d" = "$x" ]; then letters+=${d:0:1}; fi
                done ;;
        cg-high) letters=cipqrs ;;
        leave-out-domain) for d in "${CG_DOMAINS[@]}"; do
                              if [ "$d" != "$x" ]; then letters+=${d:0:1}; fi
                          done ;;
        *) cg_die "unknown setup '$setup'" ;;
    esac
    printf 'lso-%s-no%sclasses' "$letters" "$x"
}

# ---------------------------------------------------------------------------------------------------------------
# Running commands

cg_quote() {  # the arguments as one shell-quoted line (plain words stay unquoted)
    local a line="" q="'"
    for a in "$@"; do
        if [[ $a =~ ^[A-Za-z0-9_./:=,+@%-]+$ ]]; then
            line+="${line:+ }$a"
        else
            line+="${line:+ }'${a//$q/$q\\$q$q}'"
        fi
    done
    printf '%s' "$line"
}

cg_run() {  # print `+ COMMAND`; run it unless this is a dry run
    printf '+ %s\n' "$(cg_quote "$@")"
    if cg_dry; then return 0; fi
    "$@"
}

cg_mkdir() {  # folders are made only when the pipeline really runs
    if ! cg_dry; then mkdir -p "$@"; fi
}

cg_init_clipgen() {  # CG_CLIPGEN: the clipgen command as an array, its program resolved to an absolute path
    local words exe venv
    if [ -z "${CLIPGEN+x}" ] && ! command -v clipgen > /dev/null 2>&1; then
        # not on PATH: the project's own environment (make install), if there is one
        venv="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/clipgen"
        if [ -x "$venv" ]; then CLIPGEN=$venv; fi
    fi
    read -r -a words <<< "${CLIPGEN:-clipgen}"
    [ ${#words[@]} -gt 0 ] || cg_die "CLIPGEN is empty (the clipgen command, e.g. /path/to/.venv/bin/clipgen)"
    exe=$(command -v -- "${words[0]}") ||
        cg_die "CLIPGEN: '${words[0]}' not found (activate clipgen's environment, run make install, or set CLIPGEN=/path/to/clipgen)"
    case "$exe" in /*) ;; *) cg_die "CLIPGEN: '${words[0]}' is not a program" ;; esac
    words[0]=$exe
    CG_CLIPGEN=("${words[@]}")
    if [ ${#words[@]} -eq 1 ]; then export CLIPGEN=$exe; fi  # jobs and continuation jobs run the same clipgen
}

cg_clipgen() { cg_run "${CG_CLIPGEN[@]}" "$@"; }

# ---------------------------------------------------------------------------------------------------------------
# State shared by the stages of one driver run (job ids); a stage run on its own gets a private one.

cg_init_state() {  # also CG_BATCH_DIR: this submission's job scripts and task lists (never overwritten later,
    #                   so tasks of an array still queued from an earlier submission keep their list)
    if [ -z "${CG_BATCH_DIR:-}" ]; then CG_BATCH_DIR=$CG_JOBS/$(date -u +%Y%m%d-%H%M%S)-$$; fi
    export CG_BATCH_DIR
    if [ -z "${CG_STATE_DIR:-}" ] || [ ! -d "$CG_STATE_DIR" ]; then
        CG_STATE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/clipgen-pipeline.XXXXXX")
        # shellcheck disable=SC2064  # expand now: the folder of this process
        trap "rm -rf '$CG_STATE_DIR'" EXIT
    fi
    export CG_STATE_DIR
    touch "$CG_STATE_DIR/deps.tsv"
}

cg_dep_set() {  # cg_dep_set KEY JOB: the job that produces KEY (a run directory, a store file)
    printf '%s\t%s\n' "$1" "$2" >> "$CG_STATE_DIR/deps.tsv"
}

cg_dep_get() {  # cg_dep_get KEY...: the job producing the first KEY known in this driver run, else AFTER
    local job="" k
    for k in "$@"; do
        job=$(awk -F '\t' -v k="$k" '$1 == k { j = $2 } END { print j }' "$CG_STATE_DIR/deps.tsv")
        if [ -n "$job" ]; then break; fi
    done
    printf '%s' "${job:-${AFTER:-}}"
}

cg_check_after() {  # AFTER: job ids every job of a stage run on its own waits for (a:b:c)
    AFTER=${AFTER:-}
    [[ $AFTER =~ ^[A-Za-z0-9_:-]*$ ]] || cg_die "AFTER=$AFTER: not a list of SLURM job ids (e.g. 1234:1235)"
}

cg_jobs_add() {  # cg_jobs_add LIST JOB: remember a job id under a list name (e.g. train)
    printf '%s\n' "$2" >> "$CG_STATE_DIR/jobs.$1"
}

cg_jobs_get() {  # cg_jobs_get LIST: the ids as a dependency list (a:b:c), empty when none
    if [ -f "$CG_STATE_DIR/jobs.$1" ]; then paste -sd: "$CG_STATE_DIR/jobs.$1"; fi
}

cg_deps_join() {  # cg_deps_join A B ...: the job ids of the arguments (each a:b:c or empty), once each, by ':'
    local a j out="" ids
    for a in "$@"; do
        IFS=: read -r -a ids <<< "$a"
        for j in "${ids[@]}"; do
            if [ -n "$j" ] && [[ :$out: != *:$j:* ]]; then out+="${out:+:}$j"; fi
        done
    done
    printf '%s' "$out"
}

# ---------------------------------------------------------------------------------------------------------------
# SLURM

cg_res() {  # cg_res GPUS TIME CPUS [MEM]: the resource options of one job (or array task), in CG_RES
    local gpus=$1 time=$2 cpus=$3 mem=${4:-} part
    CG_RES=(--time="$time" --nodes=1 --cpus-per-task="$cpus")
    if [ "$gpus" -gt 0 ]; then
        CG_RES+=(--gres="gpu:$gpus")
        part=${PARTITION:-}
    else
        part=${CPU_PARTITION:-${PARTITION:-}}
    fi
    if [ -n "$part" ]; then CG_RES+=(--partition="$part"); fi
    cg_res_account
    if [ -n "$mem" ]; then CG_RES+=(--mem="$mem"); fi
}

cg_res_account() {  # account and QOS only (for job scripts written by clipgen, which hold their resources)
    if [ -n "${ACCOUNT:-}" ]; then CG_RES+=(--account="$ACCOUNT"); fi
    if [ -n "${QOS:-}" ]; then CG_RES+=(--qos="$QOS"); fi
}

cg_next_dry_id() {
    local f=$CG_STATE_DIR/dry-counter n=0
    if [ -f "$f" ]; then n=$(cat "$f"); fi
    n=$((n + 1))
    printf '%s' "$n" > "$f"
    printf 'dry-%s' "$n"
}

cg_submit() {  # cg_submit NAME DEPS [SBATCH OPTIONS...] -- SCRIPT [ARGS...]: submit; CG_JOB = the job id
    local name=$1 deps=$2 opts=() out log=%x-%j.out a
    shift 2
    while [ $# -gt 0 ] && [ "$1" != -- ]; do
        case "$1" in --array=*) log=%x-%A_%a.out ;; esac
        opts+=("$1")
        shift
    done
    [ $# -gt 1 ] || cg_die "cg_submit $name: no batch script given"
    shift
    local cmd=(sbatch --parsable --job-name="$name" --output="$CG_LOGS/$log")
    cmd+=("${opts[@]}")
    if [ -n "$deps" ]; then cmd+=(--dependency="afterok:$deps" --kill-on-invalid-dep=yes); fi
    cmd+=("$@")
    if cg_dry; then
        CG_JOB=$(cg_next_dry_id)
        printf '+ %s  # -> job %s\n' "$(cg_quote "${cmd[@]}")" "$CG_JOB"
        return 0
    fi
    command -v sbatch > /dev/null ||
        cg_die "sbatch not found: run this on a SLURM login node (DRY_RUN=1 shows the submissions)"
    mkdir -p "$CG_LOGS"
    printf '+ %s\n' "$(cg_quote "${cmd[@]}")"
    out=$("${cmd[@]}") || cg_die "sbatch failed for job $name (its message is above)"
    a=${out%%;*}
    a=${a//[[:space:]]/}
    [[ $a =~ ^[0-9]+$ ]] || cg_die "sbatch printed '$out' instead of a job id for job $name"
    CG_JOB=$a
    printf 'submitted job %s: %s%s\n' "$CG_JOB" "$name" "${deps:+ (after $deps)}"
    printf '%s\t%s\t%s\t%s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$CG_JOB" "$name" "${deps:-none}" \
        >> "$CG_JOBS/submitted.tsv"
}

cg_submit_cmd() {  # cg_submit_cmd NAME DEPS [SBATCH OPTIONS...] -- COMMAND [ARGS...]: one command as a job
    local name=$1 deps=$2 opts=()
    shift 2
    while [ $# -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
    shift
    cg_submit "$name" "$deps" "${opts[@]}" -- "$CG_JOB_SBATCH" "$@"
}

cg_write_tasks() {  # cg_write_tasks FILE TASK...: one shell-quoted command per line (array task i runs line i+1)
    local file=$1 t
    shift
    if cg_dry; then
        cg_note "would write $file ($# tasks):"
        for t in "$@"; do printf '#   %s\n' "$t"; done
        return 0
    fi
    mkdir -p "$(dirname "$file")"
    printf '%s\n' "$@" > "$file.tmp"
    mv "$file.tmp" "$file"
}

cg_run_done() {  # cg_run_done RUN_DIR: the run's manifest says it is complete
    [ -f "$1/clipgen-run.json" ] && grep -q '"status": "complete"' "$1/clipgen-run.json"
}

# ---------------------------------------------------------------------------------------------------------------
# The image cache of the DomainNet test split: every test image decoded once (`clipgen data cache`, one CPU job per
# domain) into OUT/cache/test-SIZE/<domain>.h5; evaluation, the test-split stores and the circuits read the folder
# with --images instead of decoding the JPEGs in every job. Variables: IMAGE_CACHE (1; 0: decode in every job),
# CACHE_SIZE (the models' input size: 224, 64 with PRESET=synthetic), CACHE_CPUS (16), CACHE_TIME (04:00:00).

cg_dep_known() {  # cg_dep_known KEY: the job producing KEY in this driver run, or nothing (no AFTER fallback)
    awk -F '\t' -v k="$1" '$1 == k { j = $2 } END { print j }' "$CG_STATE_DIR/deps.tsv"
}

cg_image_cache() {  # sets CG_IMAGES (--images FOLDER, or nothing) and CG_CACHE_DEP (the jobs that build it)
    CG_IMAGES=() CG_CACHE_DEP=""
    cg_require_flag IMAGE_CACHE 1
    if [ "$IMAGE_CACHE" = 0 ]; then return 0; fi
    local size=${CACHE_SIZE:-} dir d f job
    if [ -z "$size" ]; then
        if [ "${PRESET:-}" = synthetic ]; then size=64; else size=224; fi
    fi
    [[ $size =~ ^[1-9][0-9]*$ ]] || cg_die "CACHE_SIZE=$size: not a positive integer"
    cg_require_int CACHE_CPUS 16
    dir=$OUT/cache/test-$size
    CG_IMAGES=(--images "$dir")
    for d in "${CG_DOMAINS[@]}"; do
        f=$dir/$d.h5
        job=$(cg_dep_known "$f")
        if [ -z "$job" ] && { [ ! -f "$f" ] || [ -d "$f.parts" ]; }; then  # missing, or interrupted: (re)run
            cg_mkdir "$dir"
            cg_res 0 "${CACHE_TIME:-04:00:00}" "$CACHE_CPUS"
            cg_submit_cmd "clipgen-cache-test-$d" "" "${CG_RES[@]}" -- "${CG_CLIPGEN[@]}" data cache \
                --data "$DOMAINNET" --split test --domains "$d" --size "$size" --out "$f" --no-progress
            job=$CG_JOB
            cg_dep_set "$f" "$job"
        fi
        CG_CACHE_DEP=$(cg_deps_join "$CG_CACHE_DEP" "$job")
    done
}
