#!/bin/sh
# ctest driver for serve_openai_test.py: `fairkv serve` through the real openai client and
# against jinja2. Both come from the virtual environment scripts/test makes (build/venv); without
# it the test is skipped (exit 77) and says how to make it.
# Usage: serve_openai_check.sh VENV FAIRKV STORIES260K SMOLLM2 TEMPLATE_DIR [MPIEXEC ARGS...]
set -u
venv=$1
shift
python=$venv/bin/python
if [ ! -x "$python" ] || ! "$python" -c 'import openai, jinja2' 2>/dev/null; then
  echo "skipped: no virtual environment with openai and jinja2 at $venv (scripts/test makes it:" \
    "python3 -m venv $venv && $venv/bin/pip install openai jinja2)"
  exit 77
fi
exec "$python" "$(dirname "$0")/serve_openai_test.py" "$@"
