#!/bin/sh
# Restore OMOP CDM 5.4 tables from CEHR-GPT patient sequences with local Spark (the seed's Step 2).
#
#   sh scripts/omop_pipeline.sh --patient-sequence-folder=P --omop-folder=O \
#       --source-omop-folder=V [--cpu-cores=N] [--type-concept-id=C] [--id-offset=R] [--min-persons=M]
#       [--end-date=YYYY-MM-DD]
#
# Flags take "--flag=value" or "--flag value". Runs `$PYTHON -m cehrgpt.omop.restore`
# on local[N]; N defaults to every core. PYTHON defaults to `python` on PATH when it can
# import cehrgpt, else to this repository's .venv/bin/python (no need to activate it). --type-concept-id
# (default 32817, EHR), --id-offset (default: the generation seed), --min-persons (default 1: fewer
# restored persons publish nothing, exit 2) and --end-date (default: today; later tokens are rejected as
# after_end_date) go to the restore as they are.
# Output: O/<table>/, O/rejected/, O/restore_report.json and, last, O/_SUCCESS.
set -eu

usage() {
    sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'
}

die() {
    printf 'error: %s\n' "$1" >&2
    exit 2
}

patient_sequence_folder=
omop_folder=
source_omop_folder=
cpu_cores=
type_concept_id=
id_offset=
min_persons=
end_date=

while [ $# -gt 0 ]; do
    flag=$1
    case $flag in
        -h | --help)
            usage
            exit 0
            ;;
        --*=*)
            name=${flag%%=*}
            value=${flag#*=}
            ;;
        --*)
            name=$flag
            [ $# -ge 2 ] || die "$name needs a value"
            value=$2
            shift
            ;;
        *)
            die "unexpected argument '$flag' (expected --patient-sequence-folder, --omop-folder, --source-omop-folder, --cpu-cores, --type-concept-id, --id-offset, --min-persons, --end-date)"
            ;;
    esac
    case $name in
        --patient-sequence-folder) patient_sequence_folder=$value ;;
        --omop-folder) omop_folder=$value ;;
        --source-omop-folder) source_omop_folder=$value ;;
        --cpu-cores) cpu_cores=$value ;;
        --type-concept-id) type_concept_id=$value ;;
        --id-offset) id_offset=$value ;;
        --min-persons) min_persons=$value ;;
        --end-date) end_date=$value ;;
        *) die "unknown flag '$name' (expected --patient-sequence-folder, --omop-folder, --source-omop-folder, --cpu-cores, --type-concept-id, --id-offset, --min-persons, --end-date)" ;;
    esac
    shift
done

[ -n "$patient_sequence_folder" ] || die "--patient-sequence-folder is required"
[ -n "$omop_folder" ] || die "--omop-folder is required"
[ -n "$source_omop_folder" ] || die "--source-omop-folder is required"
if [ -z "$cpu_cores" ]; then
    cpu_cores=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)
fi
case $cpu_cores in
    '' | *[!0-9]* | 0 | 0*) die "--cpu-cores must be a positive whole number, got '$cpu_cores'" ;;
esac

# The interpreter: $PYTHON, else `python` when it can import cehrgpt, else the repository's .venv.
if [ -n "${PYTHON:-}" ]; then
    python=$PYTHON
elif command -v python >/dev/null 2>&1 && python -c 'import cehrgpt' >/dev/null 2>&1; then
    python=python
else
    python=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python
    [ -x "$python" ] || die "no python that can import cehrgpt: activate a venv that has it, run 'make venv' in the repository, or set \$PYTHON"
fi

for pair in "--type-concept-id:$type_concept_id" "--id-offset:$id_offset" "--min-persons:$min_persons"; do
    case ${pair#*:} in
        '' | 0) ;;
        *[!0-9]* | 0*) die "${pair%%:*} must be a whole number, got '${pair#*:}'" ;;
    esac
done

case $end_date in
    '' | [0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]) ;;
    *) die "--end-date must be YYYY-MM-DD, got '$end_date'" ;;
esac

set -- --patient_sequence_folder "$patient_sequence_folder" \
    --omop_folder "$omop_folder" \
    --source_omop_folder "$source_omop_folder" \
    --spark_master "local[$cpu_cores]"
[ -z "$type_concept_id" ] || set -- "$@" --type_concept_id "$type_concept_id"
[ -z "$id_offset" ] || set -- "$@" --id_offset "$id_offset"
[ -z "$min_persons" ] || set -- "$@" --min_persons "$min_persons"
[ -z "$end_date" ] || set -- "$@" --end_date "$end_date"
exec "$python" -m cehrgpt.omop.restore "$@"
