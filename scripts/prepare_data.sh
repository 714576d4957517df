#!/usr/bin/env bash
# scripts/prepare_data.sh: stage 1 of the reproduction, data preparation (CPU only, runs here).
#
# Makes every TSV the training stage reads, with `clipgen data`:
#   1. ImageNet-Captions train/val TSVs from the imagenet_captions JSON and the ImageNet train folder
#      (clipgen's seeded split; the published split file is not available)     -> OUT/data/imagenet-captions/
#   2. DomainNet captions, standard and aligned (seed 42 = the paper's)           -> OUT/data/captions/
#   3. the paper's main grid (`clipgen data mixtures --paper`): natural-only + CG low, CG high and
#      leave-out-domain for the five test domains, train and val, size-matched   -> OUT/data/mixtures/
#   4. the aligned-caption CG high-diversity quickdraw mixture (the model of the mechanistic analyses) -> same
#   5. optional: the upper bounds (UPPER_BOUNDS=1), the CC12M/CC3M merges (CC12M_TSV, CC3M_TSV) and the
#      ImageNet-Sketch experiments (IMAGENET_SKETCH)        -> OUT/data/mixtures-{cc12m,cc3m,in-sketch}/
# A step whose outputs exist is skipped (FORCE=1 redoes it), so the script can be rerun after adding inputs.
#
# Usage: scripts/prepare_data.sh [--dry-run] [--check] [--help]
#   --dry-run  print every command instead of running it (also DRY_RUN=1)
#   --check    exit 0 when every step is done, 1 when some step is left (listing them); run nothing
#
# Variables:
#   OUT                      output root (required)
#   DOMAINNET                DomainNet root, the cleaned version: <domain>/<class>/*.jpg + <domain>_{train,test}.txt
#   IMAGENET_TRAIN           ImageNet train folder (<wnid>/<file>.JPEG)      } the paper's base dataset
#   IMAGENET_CAPTIONS_JSON   imagenet_captions.json (mlfoundations/imagenet-captions)  }
#   BASE_TRAIN, BASE_VAL     or: a ready base dataset (filepath<TAB>title TSVs), e.g. a synthetic DomainNet's
#                            base_train.tsv / base_val.tsv
#   VAL_FRACTION, SPLIT_SEED ImageNet-Captions validation fraction per class (0.08) and split seed (0)
#   CAPTION_SEED             DomainNet caption seed (42: the paper's captions)
#   UPPER_BOUNDS=1           also the upper-bound (pseudo) mixtures of CG low and CG high
#   CC12M_TSV, CC3M_TSV      CC12M / CC3M training TSV (filepath<TAB>title): the paper's seven CC mixtures
#   IMAGENET_SKETCH          ImageNet-Sketch folder (<wnid>/*.JPEG): the add and mix experiments (sketch)
#   CHECK_FILES=1            check that every image of the split files exists
#   FORCE=1                  redo steps whose outputs exist
#   CLIPGEN                  the clipgen command (default: clipgen on PATH)
#
# Example:
#   OUT=/scratch/clipgen DOMAINNET=/data/domainnet IMAGENET_TRAIN=/data/imagenet/train \
#   IMAGENET_CAPTIONS_JSON=/data/imagenet_captions.json CC12M_TSV=/data/cc12m/cc12m-train.tsv \
#       scripts/prepare_data.sh
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CHECK=0
args=()
for a in "$@"; do
    if [ "$a" = --check ]; then CHECK=1; else args+=("$a"); fi
done
cg_parse_args "${args[@]}"
cg_init_out
cg_require_dir DOMAINNET "the DomainNet root with <domain>_{train,test}.txt"
cg_require_flag FORCE 0
cg_require_flag UPPER_BOUNDS 0
cg_require_flag CHECK_FILES 0
cg_init_clipgen

IC=$CG_DATA/imagenet-captions
CAP=$CG_DATA/captions
MAKE_IC=0
if [ -n "${IMAGENET_TRAIN:-}${IMAGENET_CAPTIONS_JSON:-}" ]; then
    cg_require_dir IMAGENET_TRAIN "the ImageNet train folder, <wnid>/<file>.JPEG"
    cg_require_file IMAGENET_CAPTIONS_JSON "imagenet_captions.json of mlfoundations/imagenet-captions"
    if [ -n "${BASE_TRAIN:-}" ]; then
        cg_die "BASE_TRAIN is set as well as IMAGENET_TRAIN/IMAGENET_CAPTIONS_JSON: choose one base dataset"
    fi
    MAKE_IC=1
    BASE_TRAIN=$IC/in-captions-train.tsv
    BASE_VAL=$IC/in-captions-val.tsv
elif [ -n "${BASE_TRAIN:-}" ]; then
    cg_require_file BASE_TRAIN
    cg_optional_file BASE_VAL
else
    cg_die "no base dataset: set IMAGENET_TRAIN and IMAGENET_CAPTIONS_JSON (the paper's ImageNet-Captions)," \
        "or BASE_TRAIN (a filepath<TAB>title TSV)"
fi
cg_optional_file CC12M_TSV
cg_optional_file CC3M_TSV
cg_optional_dir IMAGENET_SKETCH

# A step that runs passes --force: it overwrites its own outputs (left by an interrupted or older run).
checks=()
if [ "$CHECK_FILES" = 1 ]; then checks=(--check-files); fi
base=(--base "$BASE_TRAIN")
if [ -n "${BASE_VAL:-}" ]; then base+=(--base-val "$BASE_VAL"); fi

all_exist() {  # all_exist LINES: every file of a newline-separated list exists
    local f
    while IFS= read -r f; do
        if [ -n "$f" ] && [ ! -f "$f" ]; then return 1; fi
    done <<< "$1"
    return 0
}

mixture_files() {  # mixture_files FOLDER PREFIX SUFFIX SPLITS SETUP...: the TSVs of setups x test domains
    local folder=$1 prefix=$2 suffix=$3 splits=$4 s x sp
    shift 4
    for s in "$@"; do
        for sp in $splits; do
            if [ "$s" = natural-only ]; then
                printf '%s\n' "$folder/$prefix-$sp-$(cg_identifier natural-only)$suffix.tsv"
                continue
            fi
            for x in "${CG_TEST_DOMAINS[@]}"; do
                printf '%s\n' "$folder/$prefix-$sp-$(cg_identifier "$s" "$x")$suffix.tsv"
            done
        done
    done
}

# The steps, in order: name, whether it is wanted, its outputs.
steps=()
declare -A outputs=()
want() {  # want STEP OUTPUT...: a step and the files it makes
    local name=$1
    shift
    steps+=("$name")
    outputs[$name]=$(printf '%s\n' "$@")
}

if [ "$MAKE_IC" = 1 ]; then want imagenet-captions "$BASE_TRAIN" "$BASE_VAL"; fi
cap_files=()
for d in "${CG_DOMAINS[@]}"; do
    for s in train test; do cap_files+=("$CAP/${d}_$s.tsv" "$CAP/aligned-captions/${d}_$s.tsv"); done
done
want captions "${cap_files[@]}" "$CAP/captions-summary.json"
mapfile -t paper < <(mixture_files "$CG_MIX" combined-captions "" "train val" \
    natural-only cg-low cg-high leave-out-domain)
want mixtures "${paper[@]}" "$CG_MIX/mixtures.json"
aligned_id="$(cg_identifier cg-high quickdraw)-aligned"
want aligned "$CG_MIX/combined-captions-train-$aligned_id.tsv" "$CG_MIX/combined-captions-val-$aligned_id.tsv"
if [ "$UPPER_BOUNDS" = 1 ]; then
    mapfile -t pseudo < <(mixture_files "$CG_MIX" combined-captions -pseudo "train val" cg-low cg-high)
    want upper-bounds "${pseudo[@]}"
fi
cc_ids=("$(cg_identifier natural-only)")
for x in clipart sketch; do
    for s in cg-low cg-high leave-out-domain; do cc_ids+=("$(cg_identifier "$s" "$x")"); done
done
for cc in cc12m cc3m; do
    var=${cc^^}_TSV
    if [ -n "${!var:-}" ]; then
        files=()
        for i in "${cc_ids[@]}"; do files+=("$CG_DATA/mixtures-$cc/$cc-train-$i.tsv"); done
        want "$cc" "${files[@]}" "$CG_DATA/mixtures-$cc/mixtures.json"
    fi
done
if [ -n "${IMAGENET_SKETCH:-}" ]; then want in-sketch "$CG_DATA/mixtures-in-sketch/mixtures.json"; fi

todo=()
for s in "${steps[@]}"; do
    if [ "$FORCE" = 1 ] || ! all_exist "${outputs[$s]}"; then todo+=("$s"); fi
done

if [ "$CHECK" = 1 ]; then
    if [ ${#todo[@]} -eq 0 ]; then
        echo "data: complete (${steps[*]}) in $CG_DATA"
        exit 0
    fi
    echo "data: to do: ${todo[*]}"
    exit 1
fi

is_todo() {
    local s
    for s in "${todo[@]}"; do [ "$s" = "$1" ] && return 0; done
    return 1
}

for s in "${steps[@]}"; do
    if ! is_todo "$s"; then cg_note "$s: done, skipped (FORCE=1 redoes it)"; fi
done
cg_mkdir "$CG_DATA"

if is_todo imagenet-captions; then
    cg_clipgen data imagenet-captions --captions-json "$IMAGENET_CAPTIONS_JSON" --imagenet-train "$IMAGENET_TRAIN" \
        --out "$IC" --val-fraction "${VAL_FRACTION:-0.08}" --seed "${SPLIT_SEED:-0}" --force
fi
if is_todo captions; then
    cg_clipgen data captions --root "$DOMAINNET" --out "$CAP" --seed "${CAPTION_SEED:-42}" --aligned "${checks[@]}" \
        --force
fi
if is_todo mixtures; then
    cg_clipgen data mixtures --root "$DOMAINNET" --captions "$CAP" --out "$CG_MIX" --paper "${base[@]}" \
        "${checks[@]}" --force
fi
if is_todo aligned; then
    cg_clipgen data mixtures --root "$DOMAINNET" --captions "$CAP" --out "$CG_MIX" --setup cg-high \
        --test-domain quickdraw --aligned "${base[@]}" "${checks[@]}" --force
fi
if is_todo upper-bounds; then
    cg_clipgen data mixtures --root "$DOMAINNET" --captions "$CAP" --out "$CG_MIX" --setup cg-low,cg-high \
        --test-domain all --pseudo "${base[@]}" "${checks[@]}" --force
fi
for cc in cc12m cc3m; do
    if is_todo "$cc"; then
        var=${cc^^}_TSV
        cg_clipgen data merge-base --base "${!var}" --mixtures "$CG_MIX" --out "$CG_DATA/mixtures-$cc" \
            --identifiers paper-cc --name "$cc" "${checks[@]}" --force
    fi
done
if is_todo in-sketch; then
    cg_clipgen data imagenet-sketch --root "$DOMAINNET" --sketch-root "$IMAGENET_SKETCH" \
        --out "$CG_DATA/mixtures-in-sketch" --captions "$CAP" "${base[@]}" "${checks[@]}" --force
fi

if cg_dry; then
    cg_note "dry run: nothing was written (${#todo[@]} of ${#steps[@]} steps would run)"
else
    echo "data ready in $CG_DATA: ${steps[*]}"
fi
