# Sourced by the README's two commands: creates (once) and activates the project-local
# virtual environment. Everything it writes lives under .cache/ in the repository root.
set -euo pipefail
MINIREC_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export MINIREC_CACHE="${MINIREC_CACHE:-$MINIREC_ROOT/.cache}"
export PIP_CACHE_DIR="$MINIREC_CACHE/pip"
export TFDS_DATA_DIR="${TFDS_DATA_DIR:-$MINIREC_CACHE/tensorflow_datasets}"
export MPLCONFIGDIR="$MINIREC_CACHE/matplotlib"
VENV="$MINIREC_CACHE/venv"
STAMP="$VENV/.minirec-installed"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
# Reinstall whenever setup.py changes (the stamp stores its hash).
WANT="$(python3 -c 'import hashlib,sys;print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest())' "$MINIREC_ROOT/setup.py")"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e "$MINIREC_ROOT[test]"
  echo "$WANT" > "$STAMP"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
cd "$MINIREC_ROOT"
