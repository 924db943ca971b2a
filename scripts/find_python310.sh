#!/usr/bin/env bash
# Prints the path of a Python 3.10 interpreter, or explains and fails.
# TFX 1.16 (the newest full TFX stack available) installs only on Python 3.10.
set -u

is_310() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' >/dev/null 2>&1; }

# 1. An explicit choice.
if [ -n "${PYTHON310:-}" ]; then
  if is_310 "$PYTHON310"; then echo "$PYTHON310"; exit 0; fi
  echo "PYTHON310=$PYTHON310 is not a working Python 3.10" >&2; exit 1
fi
# 2. On PATH (a pyenv shim counts only if it actually runs 3.10).
for candidate in python3.10 python3; do
  path=$(command -v "$candidate" 2>/dev/null) || continue
  if is_310 "$path"; then echo "$path"; exit 0; fi
done
# 3. Installed through pyenv but not the global version: use it directly.
if command -v pyenv >/dev/null 2>&1; then
  root=$(pyenv root)
  for path in $(ls -d "$root"/versions/3.10.*/bin/python3.10 2>/dev/null | sort -V -r); do
    if is_310 "$path"; then echo "$path"; exit 0; fi
  done
fi
cat >&2 <<'MSG'
error: mtrank needs Python 3.10 (TFX 1.16 does not install on 3.11+), and none was found.
Looked for: $PYTHON310, python3.10 and python3 on PATH, pyenv's versions/3.10.*.
Install one, e.g. `pyenv install 3.10.13`, or point PYTHON310 at an interpreter.
MSG
exit 1
