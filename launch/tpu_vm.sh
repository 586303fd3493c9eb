#!/usr/bin/env bash
# Run a job on a Cloud TPU VM (one host or a pod): create it, install this
# repository on every worker, run the same command on all workers with the
# workdir on GCS, stream the logs, delete it.
#
#   bash launch/tpu_vm.sh --name=bert-base --zone=us-central2-b --accelerator=v4-16 \
#       --workdir=gs://BUCKET/bert_base --config=configs/pretrain/bert_base.py:phase1 \
#       [--version=tpu-ubuntu2204-base] [--queued] [--keep] [--dry-run] [-- --config.key=value ...]
#
# --dry-run prints every gcloud command instead of running it. --queued asks for
# the slice through a queued resource (waits for capacity). --keep leaves the
# VM up after the job (otherwise it is deleted, also when the job fails).
set -euo pipefail

name="" zone="" accelerator="" workdir="" config="" version="tpu-ubuntu2204-base"
project_flag="" queued=0 keep=0 dry_run=0 extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --accelerator=*) accelerator="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --project=*) project_flag="--project=${1#*=}" ;;
    --queued) queued=1 ;;
    --keep) keep=1 ;;
    --dry-run) dry_run=1 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "tpu_vm.sh: unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

die() { echo "tpu_vm.sh: $*" >&2; exit 2; }
[ -n "$name" ] || die "--name is required"
[[ "$name" =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] || die "--name=$name: TPU names are lowercase letters, digits and '-', starting with a letter"
[ -n "$zone" ] || die "--zone is required"
[ -n "$accelerator" ] || die "--accelerator is required (e.g. v5litepod-16, v4-16)"
[ -n "$config" ] || die "--config is required"
[[ "$workdir" == gs://* ]] || die "--workdir=$workdir: a pod's workers share only GCS; give a gs:// path"

# One string, quoted for the remote shell, that every worker runs unchanged.
job=(.venv/bin/python -m train.main "--config=$config" "--workdir=$workdir" --config.distributed=True "${extra[@]}")
remote_job="cd ~/bert-flax && $(printf '%q ' "${job[@]}")2>&1 | tee -a ~/job.log"
remote_setup="cd ~/bert-flax && python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -c constraints.txt -e '.[tpu]'"

common=(--zone="$zone")
[ -n "$project_flag" ] && common+=("$project_flag")

run() {
  if [ "$dry_run" = 1 ]; then
    printf '%q ' "$@"; echo
  else
    "$@"
  fi
}

if [ "$queued" = 1 ]; then
  run gcloud compute tpus queued-resources create "$name" --node-id="$name" "${common[@]}" \
    --accelerator-type="$accelerator" --runtime-version="$version"
  [ "$dry_run" = 1 ] || until gcloud compute tpus queued-resources describe "$name" "${common[@]}" \
    --format='value(state.state)' | grep -q ACTIVE; do sleep 30; done
else
  run gcloud compute tpus tpu-vm create "$name" "${common[@]}" \
    --accelerator-type="$accelerator" --version="$version"
fi

cleanup() {
  [ "$keep" = 1 ] && return
  if [ "$queued" = 1 ]; then
    run gcloud compute tpus queued-resources delete "$name" "${common[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$name" "${common[@]}" --quiet
  fi
}
trap cleanup EXIT

archive=/tmp/bert-flax-$name.tar.gz
run git -C "$(dirname "$0")/.." archive --format=tar.gz --prefix=bert-flax/ -o "$archive" HEAD
run gcloud compute tpus tpu-vm scp "$archive" "$name:~/bert-flax.tar.gz" "${common[@]}" --worker=all
run gcloud compute tpus tpu-vm ssh "$name" "${common[@]}" --worker=all \
  --command="rm -rf ~/bert-flax && tar xzf ~/bert-flax.tar.gz -C ~ && $remote_setup"
# Every worker runs the same command; each prints its own log, streamed here.
run gcloud compute tpus tpu-vm ssh "$name" "${common[@]}" --worker=all --command="$remote_job"
