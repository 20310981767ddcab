#!/bin/sh
# Pin Ray's base image by digest (`make pin-image`): resolves the tag in cluster/Dockerfile's FROM to the digest
# its registry serves now (crane digest, else docker buildx imagetools inspect) and writes TAG@DIGEST into
# cluster/Dockerfile and cluster/aws.yaml. Run it once per Ray release, from the repository root, and commit.
set -eu
tag=$(sed -n 's#^FROM \(rayproject/ray:[^@ ]*\).*#\1#p' cluster/Dockerfile)
if command -v crane >/dev/null 2>&1; then
    digest=$(crane digest "$tag")
else
    digest=$(docker buildx imagetools inspect "$tag" --format '{{json .Manifest.Digest}}' | tr -d '"')
fi
case "$digest" in
    sha256:????????????????????????????????????????????????????????????????) ;;
    *) echo "pin-image: no digest for $tag (got '$digest')" >&2; exit 1 ;;
esac
sed -i "s#^FROM rayproject/ray:[^ ]*#FROM $tag@$digest#" cluster/Dockerfile
sed -i "s#image: rayproject/ray:[^ ]*#image: $tag@$digest#" cluster/aws.yaml
echo "pinned $tag@$digest in cluster/Dockerfile and cluster/aws.yaml"
