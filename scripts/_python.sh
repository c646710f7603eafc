# shellcheck shell=bash
# Sourced (not run) by every scripts/*.sh and oft-db/*.sh: the one place that picks their Python interpreter
# and puts the repository on PYTHONPATH.
#
#   source "$here/../scripts/_python.sh"
#   oft_python tqdm numpy      # sets OFT_PYTHON, or exits 1 with one line when it lacks these modules
#   exec "$OFT_PYTHON" "$here/some_script.py" "$@"

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  echo "${0##*/}: is sourced by the scripts/*.sh and oft-db/*.sh entry points, not run" >&2
  exit 2
fi

OFT_REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PYTHONPATH="$OFT_REPO${PYTHONPATH:+:$PYTHONPATH}"

# oft_python MODULE...: choose the interpreter and check that it can find MODULE... (top-level import names of
# the third-party packages the calling script needs). The check uses importlib.util.find_spec, which locates
# a module without importing it (torch takes seconds to import), so it costs one interpreter start.
oft_python() {
  local script="${0##*/}" py where fix
  # Precedence: $PYTHON when set, because it is the user's deliberate choice (e.g. PYTHON=python to use an
  # activated conda env); else the repository's .venv/bin/python (what `make` builds), so nothing needs
  # activating; else python3 on PATH.
  if [[ -n ${PYTHON:-} ]]; then
    py=$PYTHON where=" (\$PYTHON)"
    fix="point PYTHON at the project's environment's python, or unset it to use .venv (make test creates it)"
  elif [[ -x $OFT_REPO/.venv/bin/python ]]; then
    py=$OFT_REPO/.venv/bin/python where=""
    fix="rebuild it with make clean-venv test, or set PYTHON to your environment's python"
  else
    py=python3 where=" ($(command -v python3 || echo 'not on PATH'))"
    fix="run make test (creates .venv) or activate your environment"
  fi
  if ! command -v "$py" >/dev/null 2>&1; then
    echo "$script: no Python interpreter '$py'$where: $fix" >&2
    exit 1
  fi
  local out status=0
  # Python-2-safe syntax, and only the last line of any output is shown: never a traceback.
  out=$("$py" -c '
import sys
from importlib.util import find_spec
missing = [repr(m) for m in sys.argv[1:] if find_spec(m) is None]
if missing:
    print(("No module named " if len(missing) == 1 else "No modules named ") + ", ".join(missing))
    sys.exit(1)
' "$@" 2>&1) || status=$?
  if ((status != 0)); then
    out=${out##*$'\n'}
    echo "$script: $py$where lacks the project's packages (${out:-exit status $status}): $fix" >&2
    exit 1
  fi
  # shellcheck disable=SC2034  # read by the sourcing script
  OFT_PYTHON=$py
}
