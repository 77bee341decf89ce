#!/usr/bin/env bash
# Install everything musicgen-live needs into .venv/ (idempotent; fast when nothing changed).
# Debian packages first (where the machine has apt and we are root or have sudo), then the venv.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages beyond Python wheels: PortAudio (built with JACK) for sound devices, JACK with
# its dummy driver so the tests drive PortAudio's real callback path without a sound card;
# liblo-tools (oscsend, oscdump), chromium and puredata-core (pd -nogui runs the Pd example) are real
# OSC and browser peers for the bridge tests.
APT_PACKAGES=(libportaudio2 jackd2 liblo-tools chromium puredata-core)

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  if command -v apt-get >/dev/null; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "warning: cannot install ${missing[*]} (no apt-get); install them by hand" >&2
  fi
fi

PY=${PYTHON:-python3}
stamp=.venv/.installed
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv"
  "$PY" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
  echo "installing Python packages into .venv (torch is large: the first time takes a few minutes)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev,cluster]'
  # The reference for the melody (chroma) parity tests: transformers' MusicgenMelodyFeatureExtractor
  # builds its spectrogram with torchaudio, pure Python over torch.stft. torchaudio's wheels stop at
  # 2.11 and pin that torch, so its Python package goes in without its dependencies; musicgen-live
  # itself never imports it (engine/melody.py makes the same torch.stft call).
  .venv/bin/python -m pip install -q --no-deps "torchaudio==2.11.1"
  # The reference for the audiocraft-format parity tests (tests/engine/test_audiocraft.py): audiocraft
  # itself. It pins torch 2.1 and xformers, so it goes in without its dependencies; the modules it
  # imports are in the dev extra, and the tests stand in for xformers (tests/engine/audiocraft_reference.py).
  .venv/bin/python -m pip install -q --no-deps "audiocraft==1.3.0"
  touch "$stamp"
fi
