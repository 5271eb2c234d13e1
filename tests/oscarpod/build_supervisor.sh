#!/usr/bin/env bash
# The real OSCAR FaaS Supervisor (PyPI faas-supervisor 1.5.8) frozen as OSCAR ships it:
# a PyInstaller onedir, `supervisor` beside its `_internal/` folder, in
# .tools/oscar-bin-supervisor/. Also an S3-compatible server (moto) for the storage
# tests, in its own venv (moto needs a newer botocore than the supervisor's pin).
# Cached: rebuilt only when this script changes. Prints the build time.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOOLS=.tools
OUT=$TOOLS/oscar-bin-supervisor
STAMP=$OUT/.built-by
HASH=$(sha256sum "$0" | cut -c1-16)
if [ -x "$OUT/supervisor" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$HASH" ] \
    && [ -x "$TOOLS/s3-venv/bin/moto_server" ]; then
  exit 0
fi
start=$(date +%s%N)
PY=${PYTHON:-python3}

# 1.5.8's metadata declares `webdavclient3==3.14.6requests`, which pip >= 24.1 refuses:
# an older pip installs the wheel itself without dependencies, and its requirements
# (the pins of the supervisor's own requirements.txt, less the AWS Lambda and Rucio
# clients that a pod's synchronous path does not import) are installed beside it.
BUILD=$TOOLS/supervisor-build
rm -rf "$BUILD"
$PY -m venv "$BUILD/venv"
B=$BUILD/venv/bin
$B/pip install -q --disable-pip-version-check 'pip==24.0'
$B/pip install -q --disable-pip-version-check --no-deps 'faas-supervisor==1.5.8'
$B/pip install -q --disable-pip-version-check \
  'boto3==1.20.38' 'botocore==1.23.38' 's3transfer==0.5.2' 'jmespath==0.10.0' \
  'webdavclient3==3.14.6' 'lxml==6.1.3' 'python-dateutil==2.9.0.post0' 'six==1.17.0' \
  'requests==2.32.4' 'urllib3==1.26.20' 'idna==3.20' 'charset-normalizer==3.5.3' \
  'certifi==2026.10.19.post1' 'PyYAML==6.0.1' 'setuptools==80.9.0' \
  'pyinstaller==6.22.3' 'pyinstaller-hooks-contrib==2026.9' 'altgraph==0.17.5' \
  'packaging==26.4'
# As the supervisor's own CI does: `pyinstaller faassupervisor/supervisor.py` (onedir).
ENTRY=$($B/python -c 'import faassupervisor.supervisor as s; print(s.__file__)')
rm -rf "$OUT"
$B/pyinstaller --noconfirm --log-level WARN --onedir --name supervisor \
  --distpath "$TOOLS/.supervisor-dist" --workpath "$BUILD/work" --specpath "$BUILD" \
  "$ENTRY"
mv "$TOOLS/.supervisor-dist/supervisor" "$OUT"
rmdir "$TOOLS/.supervisor-dist"

# The S3-compatible server: moto's standalone server, pinned with what it pulls in.
rm -rf "$TOOLS/s3-venv"
$PY -m venv "$TOOLS/s3-venv"
$TOOLS/s3-venv/bin/pip install -q --disable-pip-version-check \
  'moto[s3,server]==5.2.5' 'boto3==1.44.8' 'botocore==1.44.8' 'Flask==3.1.3' \
  'flask-cors==6.0.5' 'Werkzeug==3.1.9'

echo "$HASH" > "$STAMP"
end=$(date +%s%N)
echo "oscar-bin-supervisor: built in $(( (end - start) / 1000000 )) ms"
