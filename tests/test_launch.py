"""launch/tpu_vm.sh --dry-run: the gcloud sequence for a pod, quoted safely."""

import os
import shlex
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "launch", "tpu_vm.sh")


def dry_run(*args):
  result = subprocess.run(["bash", SCRIPT, "--dry-run", *args], capture_output=True, text=True)
  return result.returncode, result.stdout, result.stderr


POD = [
  "--name=bert-pod",
  "--zone=us-central2-b",
  "--accelerator=v4-16",
  "--workdir=gs://bucket/runs/base",
  "--config=configs/pretrain/bert_base.py:phase1",
]


def test_two_worker_pod_dry_run_prints_the_whole_sequence():
  code, out, err = dry_run(*POD, "--", "--config.optimizer.lr=2e-4")
  assert code == 0, err
  commands = [shlex.split(line) for line in out.strip().splitlines()]
  verbs = [" ".join(c[:5]) for c in commands]
  assert verbs[0] == "gcloud compute tpus tpu-vm create"
  assert "--accelerator-type=v4-16" in commands[0]
  assert verbs[-1] == "gcloud compute tpus tpu-vm delete"
  ssh = [c for c in commands if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
  scp = [c for c in commands if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]]
  # Code reaches, and the job runs on, every worker of the pod with one command.
  assert scp and all("--worker=all" in c for c in scp + ssh)
  job = [c for c in ssh if any("train.main" in a for a in c)]
  assert len(job) == 1
  remote = shlex.split(next(a for a in job[0] if a.startswith("--command=")).split("=", 1)[1])
  assert "--workdir=gs://bucket/runs/base" in remote
  assert "--config.distributed=True" in remote and "--config.optimizer.lr=2e-4" in remote


def test_arguments_reach_the_workers_as_single_words():
  hostile = "--config.data.paths=a b;rm -rf /tmp/x"
  code, out, err = dry_run(*POD, "--", hostile)
  assert code == 0, err
  job_line = next(line for line in out.splitlines() if "train.main" in line)
  command = next(a for a in shlex.split(job_line) if a.startswith("--command=")).split("=", 1)[1]
  assert hostile in shlex.split(command)  # one word on the worker: no `rm` runs


@pytest.mark.parametrize(
  "change,message",
  [
    ("--name=Bert Pod", "TPU names are lowercase"),
    ("--name=x;reboot", "TPU names are lowercase"),
    ("--workdir=/tmp/run", "give a gs:// path"),
  ],
)
def test_bad_launch_arguments_are_refused(change, message):
  key = change.split("=")[0]
  args = [a for a in POD if not a.startswith(key + "=")] + [change]
  code, _, err = dry_run(*args)
  assert code == 2 and message in err
