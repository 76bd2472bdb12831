#!/usr/bin/env bash
# Installs the optional data sets ddpm can use by name. The built-in MNIST-5k needs nothing.
#   Fashion-MNIST: Debian's dataset-fashion-mnist package (MIT, © Zalando SE) puts the four IDX
#   files in /usr/share/datasets/fashion-mnist/, where `--data fashion-mnist` finds them.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "Fashion-MNIST is already installed in /usr/share/datasets/fashion-mnist"
  exit 0
fi
$SUDO apt-get update
$SUDO apt-get install -y dataset-fashion-mnist
ls -l /usr/share/datasets/fashion-mnist/
