#!/usr/bin/env bash
# Installs Debian packages (through sudo when not root; refreshes the package
# lists once if the first try fails). Used by setup.sh and build-lang-plugins.sh.
#   scripts/apt-install.sh PACKAGE...
set -euo pipefail
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
install() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"; }
install "$@" || { $sudo apt-get update -q && install "$@"; }
