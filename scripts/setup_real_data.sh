#!/usr/bin/env bash
# Installs the two local sources of real image-caption data (Debian/Ubuntu, as root):
#   tuxpaint-stamps-default  Tux Paint's clip-art stamps with English descriptions
#                            (GPL-2, ~218 MB) -> /usr/share/tuxpaint/stamps
#   dataset-fashion-mnist    Fashion-MNIST's original IDX files (MIT, ~30 MB)
#                            -> /usr/share/datasets/fashion-mnist
# fedjax_mm.data.real_sources builds TFDS datasets from them (no network after this).
# Idempotent: does nothing when both are installed. --no-install-recommends keeps the
# Tux Paint program itself (and its SDL, sound and font packages) out.
set -euo pipefail
PACKAGES=(tuxpaint-stamps-default dataset-fashion-mnist)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "already installed: ${PACKAGES[*]}"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends "${missing[@]}"
