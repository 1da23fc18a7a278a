#!/usr/bin/env bash
# Builds (and with --push, pushes) the step images under the tags the compiled pipeline uses:
#   $REGISTRY/tlpipe-train:$VERSION and $REGISTRY/tlpipe-tensorrt:$VERSION
# REGISTRY defaults to the one in components/steps.py, VERSION to the package version (set
# TAG to override it); use the registry and tag of your deployment settings file.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${TAG:-$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' components/__init__.py)}
REGISTRY=${REGISTRY:-$(sed -n 's/^IMAGE_REGISTRY = "\(.*\)"$/\1/p' components/steps.py)}
for name in train tensorrt; do
    docker build -f "images/Dockerfile.$name" -t "$REGISTRY/tlpipe-$name:$VERSION" .
    if [ "${1:-}" = "--push" ]; then
        docker push "$REGISTRY/tlpipe-$name:$VERSION"
    fi
done
